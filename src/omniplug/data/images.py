"""Opening image files safely: a decompression-bomb guard, RGB out, errors that name the file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

#: refuse images above this many pixels (PIL's own guard only warns below 2x its limit)
MAX_IMAGE_PIXELS = 89_478_485  # PIL's default; ~9459 x 9459


class ImageTooLargeError(ValueError):
    """An image whose declared size is above the pixel limit (refused before its pixels are decoded)."""


def open_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``path`` as an RGB ``PIL.Image`` fully loaded in memory.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an
    unreadable, truncated or oversized one.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with open(path, "rb") as fp:
        return read_image(fp, name=str(path), max_pixels=max_pixels)


def read_image(fp: BinaryIO, *, name: str, max_pixels: int = MAX_IMAGE_PIXELS,
               formats: Sequence[str] | None = None, allow_animated: bool = True) -> Image.Image:
    """Decode the image in the open binary file ``fp`` (a file, an upload's bytes in ``io.BytesIO``)
    as an RGB ``PIL.Image`` fully loaded in memory; ``name`` names it in errors.

    The declared size is checked against ``max_pixels`` before any pixel is decoded
    (``ImageTooLargeError``). ``formats`` limits the decoders PIL may try (e.g. ``("PNG", "JPEG")``);
    ``allow_animated=False`` refuses images of several frames. 16-bit greyscale is scaled to 8 bits.
    Raises ``ValueError`` for an unreadable, truncated, refused or oversized image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=list(formats) if formats is not None else None) as im:
                if im.width * im.height > max_pixels:
                    raise ImageTooLargeError(f"image {name} is {im.width}x{im.height} pixels, above the limit of "
                                             f"{max_pixels}; downscale it first")
                frames = getattr(im, "n_frames", 1)
                if not allow_animated and frames > 1:
                    raise ValueError(f"image {name} is animated ({frames} frames); send a single still image")
                im.load()
                return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image {name} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {name}: not an image in a format it can read"
                         + (f" ({', '.join(formats)})" if formats is not None else "")) from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"cannot read image {name}: {exc.__class__.__name__}: {exc}; "
                         "is the file a complete image?") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB; 16/32-bit integer greyscale is scaled from the 16-bit range (a plain convert would clip it)."""
    if im.mode.startswith("I"):
        values = np.asarray(im, dtype=np.float64)
        return Image.fromarray((values / 257.0).round().clip(0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def open_label_map(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> "Image.Image":
    """Open a single-channel label map (e.g. a uint8 class-index PNG) without converting it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"label map not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise ValueError(f"label map {path} is {im.width}x{im.height} pixels, above the limit of {max_pixels}")
                im.load()
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise ValueError(f"label map {path} has mode {im.mode}; expected a single-channel class-index image "
                                     f"(mode L or P)")
                return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ValueError(f"cannot read label map {path}: {exc.__class__.__name__}: {exc}") from None

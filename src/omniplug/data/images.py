"""Opening image files safely: a decompression-bomb guard, RGB out, errors that name the file."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def _opened(fp: BinaryIO, *, name: str, max_pixels: int, formats: Sequence[str] | None) -> Iterator[Image.Image]:
    """The image in ``fp``, its declared size checked before any pixel is decoded; decoding errors inside the
    block become ``ValueError`` / ``ImageTooLargeError`` naming ``name``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=list(formats) if formats is not None else None) as im:
                if im.width * im.height > max_pixels:
                    raise ImageTooLargeError(f"image {name} is {im.width}x{im.height} pixels, above the limit of "
                                             f"{max_pixels}; downscale it first")
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image {name} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {name}: not an image in a format it can read"
                         + (f" ({', '.join(formats)})" if formats is not None else "")) from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"cannot read image {name}: {exc.__class__.__name__}: {exc}; "
                         "is the file a complete image?") from None


def read_image(fp: BinaryIO, *, name: str, max_pixels: int = MAX_IMAGE_PIXELS,
               formats: Sequence[str] | None = None, allow_animated: bool = True) -> Image.Image:
    """Decode the image in the open binary file ``fp`` (a file, an upload's bytes in ``io.BytesIO``)
    as an RGB ``PIL.Image`` fully loaded in memory; ``name`` names it in errors.

    The declared size is checked against ``max_pixels`` before any pixel is decoded
    (``ImageTooLargeError``). ``formats`` limits the decoders PIL may try (e.g. ``("PNG", "JPEG")``);
    ``allow_animated=False`` refuses images of several frames. 16-bit greyscale is scaled to 8 bits.
    Raises ``ValueError`` for an unreadable, truncated, refused or oversized image.
    """
    with _opened(fp, name=name, max_pixels=max_pixels, formats=formats) as im:
        frames = getattr(im, "n_frames", 1)
        if not allow_animated and frames > 1:
            raise ValueError(f"image {name} is animated ({frames} frames); send a single still image")
        im.load()
        return _to_rgb(im)


class ClipTooLongError(ValueError):
    """A clip with more frames than allowed."""


def frame_count(fp: BinaryIO, *, name: str, max_pixels: int = MAX_IMAGE_PIXELS,
                formats: Sequence[str] | None = None) -> int:
    """How many frames the image in ``fp`` holds (1 for a still image), read from its header."""
    with _opened(fp, name=name, max_pixels=max_pixels, formats=formats) as im:
        return int(getattr(im, "n_frames", 1))


def evenly_spaced(total: int, keep: int | None) -> list[int]:
    """``keep`` indices of ``range(total)`` spread evenly, the first and the last included (all when ``keep`` is
    None or not below ``total``)."""
    if keep is None or keep >= total:
        return list(range(total))
    if keep < 1:
        raise ValueError(f"frames to keep must be >= 1, got {keep}")
    return [round(i * (total - 1) / max(1, keep - 1)) for i in range(keep)] if keep > 1 else [0]


def read_clip(fp: BinaryIO, *, name: str, keep: int | None = 4, max_frames: int = 64,
              max_pixels: int = MAX_IMAGE_PIXELS, formats: Sequence[str] | None = None) -> list[Image.Image]:
    """The frames of an animated image (GIF, WebP, APNG) as RGB images: ``keep`` of them evenly spaced (first and
    last included; None: all). Raises ``ClipTooLongError`` above ``max_frames`` frames (checked from the header,
    before decoding) and ``ValueError`` for a still image or an unreadable one."""
    with _opened(fp, name=name, max_pixels=max_pixels, formats=formats) as im:
        total = int(getattr(im, "n_frames", 1))
        if total < 2:
            raise ValueError(f"clip {name} has a single frame; send it as an image, or a clip of 2+ frames")
        if total > max_frames:
            raise ClipTooLongError(f"clip {name} has {total} frames; the limit is {max_frames} "
                                   f"(shorten it, or send fewer frames)")
        frames = []
        for index in evenly_spaced(total, keep):
            im.seek(index)
            im.load()
            frames.append(_to_rgb(im).copy())
        return frames


def open_clip(path: str | Path, *, keep: int | None = 4, max_frames: int = 64,
              max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """A clip from ``path``: an animated image (GIF, WebP, APNG) or a folder of frame images read in name order;
    ``keep`` frames evenly spaced, as :func:`read_clip`."""
    path = Path(path).expanduser()
    if path.is_dir():
        names = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
        if len(names) < 2:
            raise ValueError(f"clip folder {path} holds {len(names)} frame images (.png/.jpg/.webp/.bmp); a clip has 2+")
        if len(names) > max_frames:
            raise ClipTooLongError(f"clip {path} has {len(names)} frames; the limit is {max_frames}")
        return [open_image(names[i], max_pixels=max_pixels) for i in evenly_spaced(len(names), keep)]
    if not path.is_file():
        raise FileNotFoundError(f"clip not found: {path} (an animated GIF/WebP/PNG, or a folder of frames)")
    with open(path, "rb") as fp:
        return read_clip(fp, name=str(path), keep=keep, max_frames=max_frames, max_pixels=max_pixels)


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

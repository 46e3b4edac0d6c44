"""Opening image files safely: a decompression-bomb guard, RGB out, errors that name the file."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

#: refuse images above this many pixels (PIL's own guard only warns below 2x its limit)
MAX_IMAGE_PIXELS = 89_478_485  # PIL's default; ~9459 x 9459


def open_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``path`` as an RGB ``PIL.Image`` fully loaded in memory.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for an
    unreadable, truncated or oversized one.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise ValueError(f"image {path} is {im.width}x{im.height} pixels, above the limit of {max_pixels}; "
                                     f"downscale it first")
                im.load()
                return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ValueError(f"cannot read image {path}: {exc.__class__.__name__}: {exc}; is the file a complete image?") from None


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

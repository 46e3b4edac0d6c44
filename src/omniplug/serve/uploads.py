"""What a request carries, checked: uploaded bytes -> RGB ``PIL`` images (size and pixel limits,
a few well-known formats; an animated upload is a clip, read as a few evenly spaced frames, its length
limited), and the options -> typed ``InferOptions``.

Images only ever arrive as bytes (an uploaded file): a text field is never taken as a server path.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from PIL import Image

from omniplug.data.images import ClipTooLongError, ImageTooLargeError, frame_count, read_clip, read_image

from .errors import RequestError
from .settings import ServeSettings

#: the image formats a request may carry (PIL decoders tried, in this order)
UPLOAD_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

OPTION_FIELDS: tuple[str, ...] = ("max_new_tokens", "do_sample", "temperature", "top_p")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
_INT = re.compile(r"[+-]?\d{1,9}")
MAX_TEMPERATURE = 10.0


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes (its client-side name is never used)."""

    data: bytes


@dataclass(frozen=True, kw_only=True)
class InferOptions:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    def check(self, settings: ServeSettings) -> None:
        """Raise ``RequestError`` 400 for a value outside its range."""
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= settings.max_new_tokens:
            raise RequestError(400, "invalid_option",
                               f"max_new_tokens must be a whole number from 1 to {settings.max_new_tokens}, got {n!r}")
        if not isinstance(self.do_sample, bool):
            raise RequestError(400, "invalid_option", f"do_sample must be true or false, got {self.do_sample!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or \
                not 0 < t <= MAX_TEMPERATURE:
            raise RequestError(400, "invalid_option",
                               f"temperature must be a number in (0, {MAX_TEMPERATURE:g}], got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 1:
            raise RequestError(400, "invalid_option", f"top_p must be a number in (0, 1], got {p!r}")


def parse_options(fields: Mapping[str, str], settings: ServeSettings) -> InferOptions:
    """Form text -> checked ``InferOptions``; a missing field keeps its default."""
    values: dict = {"max_new_tokens": settings.default_new_tokens}
    if "max_new_tokens" in fields:
        text = fields["max_new_tokens"].strip()
        if not _INT.fullmatch(text):
            raise RequestError(400, "invalid_option", f"max_new_tokens must be a whole number from 1 to "
                                                      f"{settings.max_new_tokens}, got {_clip(text)!r}")
        values["max_new_tokens"] = int(text)
    if "do_sample" in fields:
        text = fields["do_sample"].strip().lower()
        if text not in _TRUE | _FALSE:
            raise RequestError(400, "invalid_option", f"do_sample must be true or false, got {_clip(text)!r}")
        values["do_sample"] = text in _TRUE
    for name in ("temperature", "top_p"):
        if name in fields:
            try:
                values[name] = float(fields[name].strip())
            except ValueError:
                raise RequestError(400, "invalid_option", f"{name} must be a number, got {_clip(fields[name])!r}") from None
    options = InferOptions(**values)
    options.check(settings)
    return options


def check_prompt(prompt: object, settings: ServeSettings) -> str:
    if not isinstance(prompt, str):
        raise RequestError(400, "invalid_prompt", "the prompt must be text")
    if not prompt.strip():
        raise RequestError(400, "empty_prompt", "the prompt is empty; ask something, e.g. 'Please segment the red circle.'")
    if len(prompt) > settings.max_prompt_chars:
        raise RequestError(400, "prompt_too_long",
                           f"the prompt has {len(prompt)} characters; the limit is {settings.max_prompt_chars}")
    if "\x00" in prompt:
        raise RequestError(400, "invalid_prompt", "the prompt contains a NUL character")
    return prompt


def decode_images(uploads: Sequence[Upload], settings: ServeSettings, *, already: int = 0) -> list[Image.Image]:
    """Check and decode ``uploads`` (``already``: images the conversation holds before them)."""
    if already + len(uploads) > settings.max_images:
        raise RequestError(400, "too_many_images",
                           f"{already + len(uploads)} images; at most {settings.max_images} per request"
                           + (" and conversation (clear it to start again)" if already else ""))
    total = sum(len(u.data) for u in uploads)
    if total > settings.max_upload_bytes:
        raise RequestError(413, "upload_too_large",
                           f"the images are {total} bytes together; the limit is {settings.max_upload_bytes} bytes "
                           f"({settings.max_upload_mb:g} MB)")
    images = []
    for i, upload in enumerate(uploads, start=1):
        name = f"{already + i}"
        if not upload.data:
            raise RequestError(400, "invalid_image", f"image {name} is empty (0 bytes)")
        try:
            read = dict(name=name, max_pixels=settings.max_pixels, formats=UPLOAD_FORMATS)
            if frame_count(io.BytesIO(upload.data), **read) > 1:  # a clip: a few of its frames, as several images
                images.extend(read_clip(io.BytesIO(upload.data), keep=settings.clip_frames,
                                        max_frames=settings.max_clip_frames, **read))
            else:
                images.append(read_image(io.BytesIO(upload.data), **read))
        except ImageTooLargeError as exc:
            raise RequestError(413, "image_too_large", str(exc)) from None
        except ClipTooLongError as exc:
            raise RequestError(413, "clip_too_long", str(exc)) from None
        except ValueError as exc:
            raise RequestError(400, "invalid_image", str(exc)) from None
        if already + len(images) > settings.max_images:
            raise RequestError(400, "too_many_images",
                               f"{already + len(images)} images (a clip counts as its {settings.clip_frames} frames "
                               f"read); at most {settings.max_images} per request"
                               + (" and conversation (clear it to start again)" if already else ""))
    return images


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."

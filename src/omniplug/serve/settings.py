"""``ServeSettings``: every default and limit of the server, in one signature; and the safety check
that refuses to listen beyond this machine without a password."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Literal

#: environment variable read when --auth is not given ("user:password")
AUTH_ENV = "OMNIPLUG_SERVE_AUTH"


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    host: str = "127.0.0.1"  # loopback only unless asked
    port: int = 7860
    auth: str | None = None  # "user:password": HTTP Basic auth on the UI and the API
    max_upload_mb: float = 10.0  # per request, all files together; checked before anything is decoded
    max_pixels: int = 4096 * 4096  # per image, from its declared size: decompression bombs stop here
    max_images: int = 4  # per request (and per UI conversation); a clip counts as the frames read from it
    clip_frames: int = 4  # an animated upload (GIF/WebP/APNG) is a clip: this many frames, evenly spaced, are read
    max_clip_frames: int = 64  # longer clips are refused (413 clip_too_long) before any frame is decoded
    max_prompt_chars: int = 2000
    max_new_tokens: int = 256  # the largest max_new_tokens a request may ask for
    default_new_tokens: int = 64
    concurrency: int = 8  # requests answered at once (rows of the running batch under continuous batching)
    queue_size: int = 8  # requests waiting beyond those; more are refused with 429
    prefix_cache_mb: float = 64.0  # keys/values of earlier prompts and answers kept for later turns (0: off)
    examples: Literal["auto", "world", "none"] = "auto"  # auto: the world's examples for a model trained on it
    title: str = "omniplug"
    env: str | None = None  # an environment the served agent plays missions in (the Rollout tab, POST /v1/rollout)
    env_option: tuple[str, ...] = ()  # its options as key=value (omniplug eval's --env-option)
    max_rollout_episodes: int = 4  # episodes one rollout request may ask for (they play side by side)

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_images", "max_prompt_chars", "max_new_tokens", "default_new_tokens",
                     "concurrency", "clip_frames", "max_clip_frames", "max_rollout_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size}")
        if self.prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {self.prefix_cache_mb}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.default_new_tokens > self.max_new_tokens:
            raise ValueError(f"default_new_tokens ({self.default_new_tokens}) is above max_new_tokens "
                             f"({self.max_new_tokens})")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.examples not in ("auto", "world", "none"):
            raise ValueError(f"examples must be auto, world or none, got {self.examples!r}")
        if self.auth is not None:
            parse_auth(self.auth)
        if self.env_option and self.env is None:
            raise ValueError("env_option sets options of an environment: give env too (e.g. --env highway)")
        self.env_options  # parsed here: a malformed option fails before the server starts

    @property
    def env_options(self) -> dict:
        from omniplug.envs.base import parse_options

        return parse_options(list(self.env_option))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def credentials(self) -> tuple[str, str] | None:
        return parse_auth(self.auth) if self.auth else None


def parse_auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("auth must be 'user:password' with both parts non-empty (e.g. --auth alice:s3cret or "
                         f"{AUTH_ENV}=alice:s3cret)")
    return user, password


def auth_from_env(explicit: str | None) -> str | None:
    """``--auth`` if given, else the ``OMNIPLUG_SERVE_AUTH`` environment variable, else None."""
    return explicit if explicit else (os.environ.get(AUTH_ENV) or None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(settings: ServeSettings) -> None:
    """Refuse to listen beyond this machine without auth: raise ValueError saying what to do."""
    if not is_loopback(settings.host) and settings.auth is None:
        raise ValueError(
            f"refusing to listen on {settings.host}: that is reachable from other machines and no auth is set. "
            f"Give --auth USER:PASSWORD (or set {AUTH_ENV}) to require a password on the UI and the API, "
            "or bind to 127.0.0.1 (the default) and put your own proxy in front")

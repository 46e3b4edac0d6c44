"""Image encoders. Importing this package registers every built-in encoder."""

from omniplug.encoders import cells, clip, llava_vision, state  # noqa: F401

"""Tokenizers."""

from omniplug.tokenizers import hf  # noqa: F401

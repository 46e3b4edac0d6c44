"""Language models."""

from omniplug.llms import hf_causal_lm, llava  # noqa: F401

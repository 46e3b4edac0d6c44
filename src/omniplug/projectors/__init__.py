"""Projectors (input: image features -> LLM width; output: LLM hidden -> decoder prompt)."""

from omniplug.projectors import gen_query, linear, llava, mlp  # noqa: F401

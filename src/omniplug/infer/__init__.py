"""The one inference path: :class:`Pipeline` (CLI, batch, web UI and API all call it)."""

from omniplug.infer.pipeline import Pipeline

__all__ = ["Pipeline"]

"""Web UI and HTTP API on one server, both answering through the one inference path.

``omniplug serve -c CONFIG`` (``omniplug demo`` for the bundled default model) starts a FastAPI app
with a Gradio UI at ``/`` and ``POST /v1/infer``, ``GET /health``, ``GET /ready``; see docs/serving.md.

Modules, in the order a request meets them:
  settings.py   ``ServeSettings``: every limit and default in one signature; the bind/auth safety check
  auth.py       HTTP Basic auth over the UI and the API
  api.py        the FastAPI routes, the upload size limit, structured ``{"error": {...}}`` answers
  ui.py         the Gradio Blocks UI (chat, examples, overlays, downloads, timings, status box)
  uploads.py    bytes -> checked PIL images; form text -> typed options
  admission.py  ``Admission``: N requests running, M waiting, the rest refused (429)
  service.py    ``Service``: loads the Pipeline in the background, ``answer()``: the one handler
  payload.py    ``Response`` -> the JSON body of ``/v1/infer``
  rollouts.py   ``Rollouts``: a typed mission played by the served agent in ``--env`` (Rollout tab, /v1/rollout)
  examples.py   example images of the procedural world for the default model
  app.py        puts it together: ``create_app`` and ``serve``
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no outbound lookups

from .errors import RequestError  # noqa: E402
from .settings import ServeSettings  # noqa: E402

__all__ = ["RequestError", "ServeSettings"]

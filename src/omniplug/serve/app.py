"""One FastAPI app: the API routes, the Gradio UI mounted at ``/``, the upload limit and auth;
:func:`serve` checks the bind address, starts loading the model and runs uvicorn."""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
from typing import Callable, Sequence

import gradio as gr
import uvicorn
from fastapi import FastAPI

from .api import BodyLimit, add_api
from .auth import BasicAuth
from .examples import Example, output_kinds, trained_on_world, world_examples
from .rollouts import check_env
from .service import Service
from .settings import ServeSettings, check_bind
from .ui import build_ui


def pick_examples(settings: ServeSettings, config: str, overrides: Sequence[str]) -> list[Example]:
    use_world = settings.examples == "world" or (settings.examples == "auto" and trained_on_world(config, list(overrides)))
    if not use_world:
        return []
    folder = tempfile.mkdtemp(prefix="omniplug-examples-")
    atexit.register(shutil.rmtree, folder, True)
    return world_examples(folder, detection="boxes" in output_kinds(config, list(overrides)))


def create_app(service: Service, settings: ServeSettings, *, examples: Sequence[Example] = ()) -> FastAPI:
    """The app for ``service``; call ``service.start()`` (or let :func:`serve` do it) to load the model."""
    app = FastAPI(title=f"{settings.title} API", version="1",
                  description="Multimodal inference: text, masks, generated images. The web UI is at /.",
                  redoc_url=None)
    add_api(app, service, settings)
    blocks = build_ui(service, settings, list(examples))
    app = gr.mount_gradio_app(app, blocks, path="/", max_file_size=settings.max_upload_bytes, ssr_mode=False,
                              mcp_server=False, show_error=True, footer_links=["api"])
    # Gradio checks that a file named in a request was uploaded (and is not some other server path)
    # only for Blocks it launched itself; mount_gradio_app leaves that check off, so turn it on.
    blocks.has_launched = True
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    credentials = settings.credentials
    if credentials is not None:
        app.add_middleware(BasicAuth, user=credentials[0], password=credentials[1])  # outermost: before the body
    return app


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on (host, port); port 0 picks a free one (``sock.getsockname()[1]``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    return sock


def serve(config: str, overrides: Sequence[str], settings: ServeSettings, *, device: str | None = None,
          announce: Callable[[str], None] = print) -> int:
    """Run the server until interrupted. Raises ValueError (before binding) for an unsafe bind."""
    check_bind(settings)
    check_env(settings)
    service = Service(config=config, overrides=overrides, settings=settings, device=device)
    app = create_app(service, settings, examples=pick_examples(settings, config, overrides))
    try:
        sock = bound_socket(settings.host, settings.port)
    except OSError as exc:
        raise ValueError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; is another server "
                         "using that port? Pick another with --port (0: any free one)") from None
    service.start()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{sock.getsockname()[1]}/"
    rollouts = f", rollouts in {settings.env}: the Rollout tab and {url}v1/rollout" if settings.env else ""
    announce(f"omniplug: serving {config} at {url} (API: {url}v1/infer, docs: {url}docs{rollouts}); the model loads "
             f"in the background, {url}ready says when it can answer. Ctrl+C stops.")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0

"""The HTTP API: ``POST /v1/infer``, ``GET /health``, ``GET /ready``; errors as
``{"error": {"code": ..., "message": ...}}``.

``/v1/infer`` takes ``multipart/form-data``: one or more ``image`` file parts (PNG, JPEG, WEBP, GIF,
BMP; optional for models that answer without one), a ``prompt`` text part and the optional text
parts ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``. Any other part is refused, as is
an ``image`` sent as text (a server path is never read). The body is capped (``BodyLimit``) before
the form is parsed and images are decoded.

``/v1/infer/many`` takes the same form with the ``prompt`` part repeated (1 to the server's
``--concurrency`` times): several questions about the same upload, answered together (the images
encoded once, the shared prompt prefix prefilled once) as ``{"answers": [one /v1/infer answer per
prompt, in order]}``.

``/v1/rollout`` (a server started with ``--env``) takes JSON ``{"mission": ..., "episodes": 1, "seed":
100000}``: the agent plays the mission's episodes; the answer holds their figures and a base64 GIF.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import RequestError
from .payload import ErrorResponse, InferManyResponse, InferResponse, RolloutRequest, RolloutResponse, to_payload
from .service import Service
from .settings import ServeSettings
from .uploads import MAX_TEMPERATURE, OPTION_FIELDS, UPLOAD_FORMATS, Upload, decode_images, parse_options

log = logging.getLogger("omniplug.serve")

API_PREFIX = "/v1/"
_ERRORS = {status: {"model": ErrorResponse, "description": what} for status, what in (
    (400, "bad input: unreadable image, bad option, empty or long prompt, unknown field, ..."),
    (401, "auth is set and the request has no valid credentials"),
    (413, "upload above the size limit, or an image above the pixel limit"),
    (415, "the body is not multipart/form-data"),
    (422, "the model cannot answer this request (e.g. it answered with a mask and no image was given)"),
    (429, "the queue is full: retry later"),
    (503, "the model is loading or failed to load (see GET /ready)"),
)}


def error_response(exc: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.as_json(), status_code=exc.status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request under ``prefix`` whose body is above ``max_bytes`` gets 413 before
    the app sees any of it (by its Content-Length, or by counting while buffering the body)."""

    def __init__(self, app, *, max_bytes: int, prefix: str = API_PREFIX) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.prefix = prefix

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        too_large = RequestError(413, "upload_too_large", f"the request body is above the limit of {self.max_bytes} "
                                                          f"bytes ({self.max_bytes / 2**20:g} MB); send smaller images")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await error_response(too_large)(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await error_response(too_large)(scope, receive, send)
                return
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def form_schema(settings: ServeSettings, *, many: bool = False) -> dict[str, Any]:
    """The OpenAPI schema of the ``/v1/infer`` (or ``/v1/infer/many``) form (FastAPI cannot infer it: the
    form is read by hand)."""
    schema = {
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": settings.max_images,
                      "description": f"image file(s) ({', '.join(UPLOAD_FORMATS)}); masks refer to the first one"},
            "prompt": {"type": "string", "maxLength": settings.max_prompt_chars,
                       "description": "the question, e.g. 'Please segment the red circle.'"},
            "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": settings.max_new_tokens,
                               "default": settings.default_new_tokens, "description": "answer length limit, in tokens"},
            "do_sample": {"type": "boolean", "default": False, "description": "sample instead of greedy decoding"},
            "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TEMPERATURE, "default": 1.0},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1.0},
        },
    }
    if many:
        schema["properties"]["prompt"] = {"type": "array", "minItems": 1, "maxItems": settings.concurrency,
                                          "items": schema["properties"]["prompt"],
                                          "description": "one part per question about the same images"}
    return schema


def add_api(app: FastAPI, service: Service, settings: ServeSettings) -> None:

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(RequestError(exc.status_code, code, str(exc.detail)), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(RequestError(400, "invalid_request", str(exc.errors())))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error_response(RequestError(500, "internal", f"internal error ({exc.__class__.__name__}); see the "
                                                            "server log"))

    @app.get("/health", summary="the process is alive")
    def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/ready", summary="200 once the model is loaded and answered a warm-up question; 503 before or if broken",
             responses={503: {"model": ErrorResponse, "description": "loading or failed"}})
    def ready() -> JSONResponse:
        r = service.readiness
        if r.state == "ready":
            return JSONResponse({"status": "ready", "message": r.message, "load_seconds": r.load_seconds,
                                 "config": service.config})
        code = "loading" if r.state == "loading" else "model_failed"
        return error_response(RequestError(503, code, r.message))

    @app.post("/v1/infer", response_model=InferResponse, responses=_ERRORS, summary="answer a prompt about images",
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"multipart/form-data": {"schema": form_schema(settings)}}}})
    async def infer(request: Request) -> JSONResponse:
        uploads, fields = await _read_form(request, settings)
        if "prompt" not in fields:
            raise RequestError(400, "missing_prompt", "the form has no 'prompt' field; add prompt=<your question>")
        options = parse_options(fields, settings)
        images = await run_in_threadpool(decode_images, uploads, settings)
        response = await run_in_threadpool(service.answer, images, fields["prompt"], options)
        payload = await run_in_threadpool(to_payload, response)
        return JSONResponse(json.loads(payload.model_dump_json()))

    @app.post("/v1/infer/many", response_model=InferManyResponse, responses=_ERRORS,
              summary="answer several prompts about the same images together",
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"multipart/form-data": {"schema": form_schema(settings,
                                                                                                       many=True)}}}})
    async def infer_many(request: Request) -> JSONResponse:
        uploads, fields = await _read_form(request, settings, repeat_prompt=True)
        prompts = fields.pop("prompt", [])
        if not prompts:
            raise RequestError(400, "missing_prompt", "the form has no 'prompt' field; add one prompt=<question> per "
                                                      "question")
        options = parse_options(fields, settings)
        images = await run_in_threadpool(decode_images, uploads, settings)
        responses = await run_in_threadpool(service.answer_many, images, prompts, options)
        payloads = await run_in_threadpool(lambda: [to_payload(r) for r in responses])
        return JSONResponse(json.loads(InferManyResponse(answers=payloads).model_dump_json()))

    @app.post("/v1/rollout", response_model=RolloutResponse, responses={**_ERRORS, 404: {
        "model": ErrorResponse, "description": "the server was started without --env"}},
              summary="the agent plays a mission in the server's environment (omniplug serve --env ENV)")
    def rollout(body: RolloutRequest) -> JSONResponse:
        with tempfile.TemporaryDirectory(prefix="omniplug-rollout-") as folder:
            done = service.rollouts.run(body.mission, body.episodes, body.seed, folder)
            gif = base64.b64encode(done.gif.read_bytes()).decode("ascii")
        out = RolloutResponse(mission=done.mission, env=str(settings.env), seeds=done.seeds, summary=done.summary,
                              episodes=done.episodes, gif=gif)
        return JSONResponse(json.loads(out.model_dump_json()))


async def _read_form(request: Request, settings: ServeSettings, *,
                     repeat_prompt: bool = False) -> tuple[list[Upload], dict[str, Any]]:
    """The multipart form -> (image uploads, text fields), refusing anything unexpected. With
    ``repeat_prompt`` the ``prompt`` field may repeat and comes back as a list."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        sent = ctype.split(";")[0] or "no content type"
        raise RequestError(415, "unsupported_media_type",
                           f"send multipart/form-data (image file parts and a prompt), not {sent!r}")
    try:
        form = await request.form(max_files=64, max_fields=64, max_part_size=settings.max_upload_bytes)
    except StarletteHTTPException as exc:
        raise RequestError(400, "malformed_form", f"the multipart body cannot be parsed: {exc.detail}") from None
    except Exception as exc:  # the multipart parser's own errors (bad boundary, bad encoding, ...)
        raise RequestError(400, "malformed_form", f"the multipart body cannot be parsed: {exc}") from None
    known = ("image", "prompt", *OPTION_FIELDS)
    uploads: list[Upload] = []
    fields: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if key not in known:
                raise RequestError(400, "unknown_field", f"unknown form field {key[:40]!r}; the fields are "
                                                         f"{', '.join(known)}")
            if key == "image":
                if not isinstance(value, UploadFile):
                    raise RequestError(400, "image_not_a_file",
                                       "'image' must be an uploaded file part (e.g. curl -F image=@photo.png), not "
                                       "text: the server never opens paths or URLs given by a client")
                uploads.append(Upload(data=await value.read()))
                continue
            if isinstance(value, UploadFile):
                raise RequestError(400, "field_not_text", f"{key!r} must be a text field, not a file")
            if repeat_prompt and key == "prompt":
                fields.setdefault("prompt", []).append(value)
                continue
            if key in fields:
                raise RequestError(400, "duplicate_field", f"{key!r} is given more than once")
            fields[key] = value
    finally:
        await form.close()
    return uploads, fields

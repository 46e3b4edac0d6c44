"""HTTP Basic auth over the whole server (the UI, its Gradio API and ``/v1/*``); ``/health`` and
``/ready`` stay open for probes (they reveal nothing but liveness)."""

from __future__ import annotations

import base64
import binascii
import hmac

from .api import error_response
from .errors import RequestError

OPEN_PATHS = frozenset({"/health", "/ready"})


class BasicAuth:
    """ASGI middleware: 401 (with a ``WWW-Authenticate`` challenge) unless the request carries
    ``user:password``; compared in constant time."""

    def __init__(self, app, *, user: str, password: str, realm: str = "omniplug") -> None:
        self.app = app
        self._expected = (user.encode(), password.encode())
        self.realm = realm

    def _allowed(self, header: bytes | None) -> bool:
        if not header or not header[:6].lower() == b"basic ":
            return False
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok_user = hmac.compare_digest(user, self._expected[0])
        ok_password = hmac.compare_digest(password, self._expected[1])
        return bool(sep) and ok_user and ok_password

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self._allowed(dict(scope["headers"]).get(b"authorization")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        denied = RequestError(401, "unauthorized", "this server requires a user name and password (HTTP Basic auth)")
        await error_response(denied, headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'})(scope, receive, send)

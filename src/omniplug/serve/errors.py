"""``RequestError``: what a client did wrong (or what the server cannot take now), as an HTTP status,
a stable machine-readable ``code`` and a message that says what to do."""

from __future__ import annotations


class RequestError(Exception):
    """Answered as ``{"error": {"code": code, "message": message}}`` with HTTP ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def as_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

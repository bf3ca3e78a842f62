"""Error responses: one JSON shape for every failure, ``{"message", "type", "field"?, "detail"}``.

``detail`` repeats the message where FastAPI puts it, for clients that read that (LlamaIndex's
Jina reranker).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

_TYPES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          408: "body_timeout", 413: "payload_too_large", 422: "invalid_request", 429: "queue_full",
          500: "internal_error", 502: "engine_error", 503: "not_ready", 504: "timeout"}


class ApiError(Exception):
    """A request that fails with ``status`` and a message for the client (naming the field when there is one)."""

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, dict(headers or {})

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, field=self.field, headers=self.headers)


def error_response(status: int, message: str, *, field: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The JSON error body for ``status``."""
    body = {"message": message, "type": _TYPES.get(status, "error")}
    if field is not None:
        body["field"] = field
    body["detail"] = message
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


__all__ = ["ApiError", "error_response"]

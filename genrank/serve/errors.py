"""Error responses: one JSON shape for every failure, ``{"message", "type", "field"?, "request_id"?, "detail"}``.

``detail`` repeats the message where FastAPI puts it, for clients that read that (LlamaIndex's
Jina reranker).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from starlette.responses import JSONResponse

_TYPES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
          408: "body_timeout", 413: "payload_too_large", 422: "invalid_request", 429: "queue_full",
          500: "internal_error", 502: "engine_error", 503: "not_ready", 504: "timeout"}


class ApiError(Exception):
    """A request that fails with ``status`` and a message for the client (naming the field when there is one)."""

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 headers: Mapping[str, str] | None = None, request_id: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, dict(headers or {})
        self.request_id = request_id

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, field=self.field, headers=self.headers,
                              request_id=self.request_id)


def internal_error(status: int, what: str, error: BaseException, log: logging.Logger) -> ApiError:
    """An ApiError saying ``what`` failed, with a new request id; ``error`` (its text and traceback, which
    may hold anything from inside genrank or the engine) goes to ``log`` under that id, never to the client."""
    request_id = uuid.uuid4().hex[:16]
    log.error("%s (request id %s): %s: %s", what, request_id, type(error).__name__, error,
              exc_info=(type(error), error, error.__traceback__))
    return ApiError(status, f"{what}; the server log has the details under request id {request_id}",
                    request_id=request_id)


def error_response(status: int, message: str, *, field: str | None = None,
                   headers: Mapping[str, str] | None = None, request_id: str | None = None) -> JSONResponse:
    """The JSON error body for ``status``."""
    body = {"message": message, "type": _TYPES.get(status, "error")}
    if field is not None:
        body["field"] = field
    if request_id is not None:
        body["request_id"] = request_id
    body["detail"] = message
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


__all__ = ["ApiError", "error_response", "internal_error"]

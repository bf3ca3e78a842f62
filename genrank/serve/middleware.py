"""ASGI middleware: access log and metrics, bearer-key auth, and the request body limit."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .metrics import Metrics

access_log = logging.getLogger("genrank.serve.access")

#: Status logged for a request whose client went away before its answer (nginx's convention).
CLIENT_CLOSED = 499


class Telemetry:
    """One access-log line and the request metrics per HTTP request: status, pairs, latency.

    The endpoint is the matched route's path, or the request's path when it is one of ``paths``
    (a request refused before routing), else "other", so metrics stay bounded; the handler
    reports the request's pairs in ``scope["state"]["pairs"]``. No body is logged.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: Iterable[str] = ()):
        self.app, self.metrics, self.paths = app, metrics, frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # if the app fails before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None)
            endpoint = route or (scope["path"] if scope["path"] in self.paths else "other")
            pairs = scope.get("state", {}).get("pairs")
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            client = scope.get("client")
            path = scope["path"][:200].encode("unicode_escape").decode("ascii")  # no line breaks forged into the log
            access_log.info('%s "%s %s" %d pairs=%s %.1fms', f"{client[0]}:{client[1]}" if client else "-",
                            scope["method"], path, status, "-" if pairs is None else pairs, seconds * 1000)


class BearerAuth:
    """Requires ``Authorization: Bearer KEY`` with one of ``keys`` on every path but ``open_paths``.

    Keys are compared in constant time (``hmac.compare_digest``, against every key) and never
    echoed; no keys means no auth.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str], open_paths: Iterable[str] = ("/health",)):
        self.app = app
        self._keys = [k.encode() for k in keys]
        self._open = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys or scope["path"] in self._open or self._allowed(scope):
            return await self.app(scope, receive, send)
        response = error_response(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                                  headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        given = given.strip()
        return sum(hmac.compare_digest(given, key) for key in self._keys) > 0  # no early exit


class BodyLimit:
    """Answers 413 to a request body over ``max_bytes``, before the app reads any of it.

    The body is read here (up to the limit) and handed on whole; afterwards ``receive`` goes to
    the server again, so a handler still hears ``http.disconnect``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(int(declared), scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(None, scope, receive, send)
            if not message.get("more_body", False):
                break
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, size: int | None, scope: Scope, receive: Receive, send: Send) -> None:
        got = f"{size} bytes" if size is not None else "more"
        response = error_response(413, f"the request body is {got}; this server takes at most {self.max_bytes} "
                                       "bytes (--max-body-mb)", headers={"Connection": "close"})
        await response(scope, receive, send)


__all__ = ["CLIENT_CLOSED", "BearerAuth", "BodyLimit", "Telemetry"]

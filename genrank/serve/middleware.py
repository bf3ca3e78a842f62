"""ASGI middleware: access log and metrics, bearer-key auth, and the request body's size and time limits."""

from __future__ import annotations

import asyncio
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

    A request whose client went away before its answer is logged and counted as 499 (never
    500); one cancelled by the server's shutdown is answered 503, without a traceback.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: Iterable[str] = ()):
        self.app, self.metrics, self.paths = app, metrics, frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status: int | None = None
        gone = False

        async def watch_receive() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, watch_receive, send_status)
        except asyncio.CancelledError:  # the server's shutdown timeout ran out
            if status is None and not gone:
                response = error_response(503, "the server is shutting down; retry", headers={"Connection": "close"})
                await response(scope, receive, send_status)
        finally:
            if status is None:  # no answer: the client went away, or the app failed
                status = CLIENT_CLOSED if gone else 500
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
    """Reads the request body before the app: 413 when it is over ``max_bytes`` (before reading any
    of it when Content-Length says so), 408 when the client has not sent it all within ``timeout``
    seconds, nothing (the client is gone) when it disconnects meanwhile.

    The body is handed on whole; afterwards ``receive`` goes to the server again, so a handler
    still hears ``http.disconnect``. A refused body is not read further and the connection closes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(413, f"the request body is {int(declared)} bytes; this server takes at most "
                                           f"{self.max_bytes} bytes (--max-body-mb)", scope, receive, send)
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            while True:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
                if message["type"] != "http.request":  # the client went away
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_bytes:
                    return await self._refuse(413, f"the request body is more than {self.max_bytes} bytes; this "
                                                   "server takes at most that (--max-body-mb)", scope, receive, send)
                if not message.get("more_body", False):
                    break
        except asyncio.TimeoutError:  # TimeoutError from 3.11 on
            return await self._refuse(408, f"the request body was not received within {self.timeout:g} s "
                                           f"(got {size} bytes; --body-timeout)", scope, receive, send)
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(status, message, headers={"Connection": "close"})
        await response(scope, receive, send)


__all__ = ["CLIENT_CLOSED", "BearerAuth", "BodyLimit", "Telemetry"]

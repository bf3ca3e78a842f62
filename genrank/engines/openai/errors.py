"""Failed requests: which are retried and after how long, which stop the run, and what messages may show."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

import openai
from tenacity import wait_exponential, wait_random
from yarl import URL

FATAL = frozenset({401, 403, 404})  # configuration errors: raised at once
RETRY_STATUS = frozenset({408, 409, 429}) | (frozenset(range(500, 600)) - {501, 505})  # 501/505: never will
_STATUS_ERRORS = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
                  404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
                  429: openai.RateLimitError}  # the openai package's classes (its _make_status_error)
MAX_WAIT = 120.0  # the longest Retry-After honoured, seconds


class Transient(Exception):
    """A failure worth retrying: 429, 5xx, timeout, dropped connection, malformed response."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class Rejected(Exception):
    """Retrying will not help: the server refused the request (4xx but 401/403/404, 501, 505) or gave no logprobs.

    ``status`` is None for an answer without logprobs; ``text`` is the server's body (redacted),
    ``where`` the endpoint as messages show it.
    """

    def __init__(self, reason: str, status: int | None = None, text: str = "", where: str | None = None):
        super().__init__(reason)
        self.status, self.text, self.where = status, text, where


def http_error(status: int, url: URL, raw: bytes, secret: str | None, retry_after: float | None = None) -> Exception:
    """The exception for an HTTP error: the openai package's for 401/403/404, else Transient or Rejected.

    Its reason names the status, the endpoint (without credentials or query) and the server's
    message; ``secret`` (the API key) is redacted from the body before anything is cut from it or kept.
    """
    text = redact(raw.decode("utf-8", "replace"), secret)
    where = shown(url)
    reason = f"HTTP {status} from {where}: {server_message(text)}"
    if status in FATAL:
        return status_error(status, where, text, reason)
    return Transient(reason, retry_after) if status in RETRY_STATUS else Rejected(reason, status, text, where)


def status_error(status: int, url: str, text: str, reason: str) -> openai.APIError:
    """The openai package's exception for ``status`` (it wants the HTTP library's request/response objects).

    200 (an answer without what was asked for) gives ``APIResponseValidationError``.
    """
    response = _http().Response(status, content=text.encode(), request=_http().Request("POST", url))
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        body = body.get("error", body)
    if status == 200:
        return openai.APIResponseValidationError(response, body, message=reason)
    cls = _STATUS_ERRORS.get(status) or (openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(reason, response=response, body=body)


def connection_error(url: URL, reason: str) -> openai.APIConnectionError:
    """The openai package's exception for a server that gave no usable answer (``reason`` says why)."""
    return openai.APIConnectionError(message=reason, request=_http().Request("GET", shown(url)))


def _http():
    # openai builds its errors from its own HTTP library's objects (httpx; httpx2 in openai 3.x):
    # take the module it uses.
    from openai import _exceptions

    return getattr(_exceptions, "httpx2", None) or _exceptions.httpx


def server_message(text: str) -> str:
    """The error message of an OpenAI-style error body, else the start of the body."""
    try:
        body = json.loads(text)
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:500]
    except ValueError:
        pass
    return text[:200] or "(empty body)"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def retry_wait(state) -> float:
    """tenacity's wait: the server's Retry-After when it sent one, else exponential backoff with jitter."""
    exc = state.outcome.exception() if state.outcome is not None else None
    seconds = getattr(exc, "retry_after", None)
    if seconds is not None:
        return min(seconds, MAX_WAIT)
    return backoff(state)


backoff = wait_exponential(multiplier=0.5, max=30.0) + wait_random(0.0, 0.5)  # 0.5 s, 1 s, 2 s, ... plus jitter


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def shown(url: URL) -> str:
    """``url`` as messages show it: without user, password or query (they may hold credentials)."""
    return str((url.with_user(None) if url.absolute else url).with_query(None))

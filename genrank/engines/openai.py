"""OpenAI-compatible remote driver: many requests in flight, exact label log-probabilities, faults survived.

Requests go out through one ``aiohttp`` session (a bare client costs a fraction of the CPU per
request of the ``openai`` SDK's, and client CPU decides throughput at scale), configured the way
the ``openai`` package is configured: ``base_url`` (else ``OPENAI_BASE_URL``), an API key (else
``GENRANK_API_KEY``, else ``OPENAI_API_KEY``), ``default_headers`` and ``default_query`` for
gateways and Azure-style deployments. Configuration errors (401, 403, 404) are raised as the
``openai`` package's exception types.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import numbers
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, Literal

import aiohttp
import numpy as np
import openai
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random
from tqdm.auto import tqdm
from yarl import URL  # aiohttp's URL type

from ..prompts import Labels, Prompts, label_token_ids
from .base import LabelLogprobs, grouped_by_query

log = logging.getLogger(__name__)

_DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the openai package's default
_MAX_TOP_LOGPROBS = 20  # OpenAI's and vLLM's (default --max-logprobs) limit
_FALLBACK_TOP_LOGPROBS = 5  # some hosted APIs allow no more
_FATAL = {401: openai.AuthenticationError, 403: openai.PermissionDeniedError, 404: openai.NotFoundError}
_RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_TOKEN_ID_PREFIX = "token_id:"  # vLLM's token form with return_tokens_as_token_ids


class _Transient(Exception):
    """A failure worth retrying: 429, 5xx, timeout, dropped connection, malformed response."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Rejected(Exception):
    """Retrying will not help: the server refused the request (4xx but 401/403/404) or gave no logprobs."""


class _RateLimiter:
    """Spaces requests so at most ``rate`` units start per ``period`` seconds, with no burst.

    A reservation schedule (each acquisition books the next free slot) rather than a bucket: it
    holds only a timestamp, so it keeps its pace across the event loops of successive calls.
    """

    def __init__(self, rate: float, period: float):
        self.rate, self.interval = rate, period / rate
        self._next = 0.0

    async def acquire(self, amount: float = 1.0) -> None:
        now = time.monotonic()
        start = max(self._next, now)
        self._next = start + min(amount, self.rate) * self.interval
        if start > now:
            await asyncio.sleep(start - now)


class OpenAIEngine:
    """Label log-probabilities from an OpenAI-compatible server (vLLM, hosted APIs, gateways).

    ``mode="chat"`` sends the system+user messages to ``/chat/completions`` and the server applies
    the model's chat template; ``mode="completions"`` renders and tokenizes the prompt here with
    the model's ``tokenizer`` and sends the token ids to ``/completions``. On a vLLM server
    (0.32 or later) the request asks for exactly the label tokens (``logprob_token_ids``), so no
    label is ever missing; elsewhere it asks for the top ``top_logprobs`` tokens (20, or 5 where
    the server allows no more) and labels outside them get probability 0 (see ``label_mass``).

    Up to ``concurrency`` requests are in flight. 429, 5xx, timeouts, dropped connections and
    malformed responses are retried up to ``max_retries`` times with exponential backoff and
    jitter, honouring ``Retry-After``; a pair that still fails, or whose answer has no logprobs, is
    reported in ``LabelLogprobs.errors`` and the rest complete. 401, 403 and 404 raise at once.

    A template with an assistant prefix (e.g. qwen3-reranker) in chat mode sends the prefix as
    a final assistant message for the server to continue (vLLM's ``continue_final_message``);
    on other servers use ``mode="completions"``.

    ``tokenizer`` (a name, a path or a tokenizer object; in completions mode the model's by
    default) lets genrank truncate prompts to ``max_length``; without one, chat prompts go whole.
    ``requests_per_second`` and ``tokens_per_minute`` pace requests on the client (tokens are
    counted with the tokenizer, else estimated at 4 characters a token). ``show_progress``
    (default: when stderr is a terminal) shows a bar with pairs/s and failures so far.
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 mode: Literal["chat", "completions"] = "chat", concurrency: int = 64, timeout: float = 60.0,
                 max_retries: int = 6, top_logprobs: int | None = None,
                 label_token_ids: bool | Literal["auto"] = "auto", tokenizer: Any | None = None,
                 requests_per_second: float | None = None, tokens_per_minute: float | None = None,
                 default_headers: Mapping[str, str] | None = None,
                 default_query: Mapping[str, str | int | float] | None = None,
                 show_progress: bool | None = None, trust_remote_code: bool = False):
        if mode not in ("chat", "completions"):
            raise ValueError(f"mode must be 'chat' or 'completions', got {mode!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
        if not _positive(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        for name, rate in (("requests_per_second", requests_per_second), ("tokens_per_minute", tokens_per_minute)):
            if rate is not None and not _positive(rate):
                raise ValueError(f"{name} must be a positive number or None, got {rate!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if top_logprobs is not None and (not isinstance(top_logprobs, int) or not 1 <= top_logprobs <= 20):
            raise ValueError(f"top_logprobs must be an integer 1..20 or None (as many as allowed), got {top_logprobs!r}")
        if label_token_ids not in ("auto", True, False):
            raise ValueError(f"label_token_ids must be 'auto', True or False, got {label_token_ids!r}")
        self.model = model
        self.mode = mode
        self.prompt_format: Literal["tokens", "chat"] = "chat" if mode == "chat" else "tokens"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE_URL).rstrip("/")
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.label_token_ids = label_token_ids
        self.show_progress = show_progress
        self._api_key = api_key or os.environ.get("GENRANK_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if self._api_key and URL(self.base_url).user is not None:  # aiohttp allows one kind of credentials
            raise ValueError("base_url holds a user name and there is an API key; give one or the other")
        self._headers = {"Content-Type": "application/json", **(default_headers or {})}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._query = {k: str(v) for k, v in (default_query or {}).items()}
        self._proxy = _environment_proxy(self.base_url)
        self._top_logprobs = top_logprobs or _MAX_TOP_LOGPROBS
        self._top_logprobs_auto = top_logprobs is None
        self._rps = _RateLimiter(requests_per_second, 1.0) if requests_per_second is not None else None
        self._tpm = _RateLimiter(tokens_per_minute, 60.0) if tokens_per_minute is not None else None
        self._tokenizer = _load_tokenizer(tokenizer or (model if mode == "completions" else None), trust_remote_code)
        self._server: str | None = None  # "vllm" when the server can return chosen tokens' logprobs, else "other"
        self._label_ids: dict[tuple[str, ...], tuple[int, ...] | None] = {}
        self._warned_untruncated = False

    @property
    def tokenizer(self) -> Any | None:
        return self._tokenizer

    def __repr__(self) -> str:  # never shows the API key or a password in base_url
        return (f"OpenAIEngine(model={self.model!r}, base_url={_shown(URL(self.base_url))!r}, mode={self.mode!r}, "
                f"concurrency={self.concurrency})")

    # -- public API --------------------------------------------------------------------------

    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        """Blocking call; inside a running event loop (Jupyter) it runs on a worker thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.alabel_logprobs(prompts, labels))
        with ThreadPoolExecutor(1, thread_name_prefix="genrank-openai") as pool:
            return pool.submit(asyncio.run, self.alabel_logprobs(prompts, labels)).result()

    async def alabel_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        """The label log-probabilities of every prompt, one request each, in input order."""
        n = len(prompts)
        values = np.full((n, len(labels.texts)), -np.inf)
        errors: dict[int, str] = {}
        if self.mode == "chat" and prompts.texts is None and not self._warned_untruncated:
            log.warning("no tokenizer for %r: prompts are sent whole, not truncated to max_length "
                        "(pass tokenizer=... to truncate)", self.model)
            self._warned_untruncated = True
        connector = aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(headers=self._headers, connector=connector, timeout=timeout) as session:
            if self._server is None:
                self._server = await self._detect_server(session)
            request, ids = await self._request_builder(session, prompts, labels)
            extract = _extractor(labels, ids)
            show = self.show_progress if self.show_progress is not None else sys.stderr.isatty()
            with tqdm(total=n, unit="pair", disable=not show, desc="genrank") as bar:
                pending = iter(grouped_by_query(prompts))  # a server's prefix cache reuses each query's prefix

                async def worker() -> None:
                    for i in pending:
                        try:
                            values[i] = await self._post_with_retries(session, partial(request, i), extract)
                        except (_Transient, _Rejected) as e:
                            errors[i] = _redact(str(e), self._api_key)
                            bar.set_postfix(failed=len(errors), refresh=False)
                        bar.update()

                workers = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, n))]
                try:
                    await asyncio.gather(*workers)
                except BaseException:  # a 401/403/404 ends the call: stop the other requests now
                    for task in workers:
                        task.cancel()
                    raise
        if errors:
            log.warning("%d of %d requests failed; first: %s", len(errors), n, errors[min(errors)])
        return LabelLogprobs(values, errors)

    # -- requests ----------------------------------------------------------------------------

    async def _request_builder(self, session: aiohttp.ClientSession, prompts: Prompts, labels: Labels):
        """A function from prompt index to (endpoint, JSON body, token estimate, top logprobs asked), and the ids.

        The ids are the label token ids asked for, None where the top log-probs are read.
        """
        ids = await self._resolve_label_ids(session, labels)
        if self.mode == "chat":
            url, extra = self._url("chat/completions"), {"logprobs": True}
            chats = prompts.chats()
            prefix = prompts.template.assistant_prefix
            if prefix:
                if self._server != "vllm":
                    raise ValueError(
                        f"template {prompts.template.name!r} has an assistant prefix, which chat mode can send "
                        f"only to a vLLM server (continue_final_message); {_shown(URL(self.base_url))} is not one. "
                        "Use mode='completions' with the model's tokenizer.")
                chats = [c + [{"role": "assistant", "content": prefix}] for c in chats]
                extra.update(continue_final_message=True, add_generation_prompt=False)
            payloads: list[Any] = chats
            field, top_field = "messages", "top_logprobs"
        else:
            if prompts.token_ids is None:
                raise ValueError("completions mode needs the model's tokenizer (tokenizer=...)")
            url, extra = self._url("completions"), {}
            payloads, field, top_field = prompts.token_ids, "prompt", "logprobs"
        if ids is not None:  # vLLM: exactly the label tokens, named by id
            extra.update(logprob_token_ids=list(ids), return_tokens_as_token_ids=True)
            if self.mode == "completions":
                extra["logprobs"] = 1  # must be set with logprob_token_ids; the ids take precedence
        head = {"model": self.model, "max_tokens": 1, "temperature": 0.0, **extra}
        lengths = (list(map(len, prompts.token_ids)) if prompts.token_ids is not None
                   else [sum(len(m["content"]) for m in c) // 4 for c in payloads])  # ~4 characters a token

        def request(i: int) -> tuple[URL, bytes, int, int | None]:
            body = {**head, field: payloads[i]}
            top = None
            if ids is None:  # read at each post: a server may refuse 20 and get 5 on the re-post
                top = body[top_field] = self._top_logprobs
            return url, json.dumps(body).encode(), lengths[i] + 1, top

        return request, ids

    async def _post_with_retries(self, session: aiohttp.ClientSession, request: Callable[[], tuple[URL, bytes, int, int | None]],
                                 extract: Callable[[dict], list[float]]) -> list[float]:
        """One prompt's label log-probs, retrying transient failures."""
        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), wait=_wait,
                                 retry=retry_if_exception_type(_Transient), reraise=True)
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    return extract(await self._post(session, request))
        except _Transient as e:
            raise _Transient(f"{e} (gave up after {attempts} attempts)") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, session: aiohttp.ClientSession,
                    request: Callable[[], tuple[URL, bytes, int, int | None]]) -> dict:
        url, body, tokens, top = request()
        if self._rps is not None:
            await self._rps.acquire()
        if self._tpm is not None:
            await self._tpm.acquire(tokens)
        try:
            async with session.post(url, data=body, proxy=self._proxy) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers) if status in _RETRY_STATUS else None
        except (asyncio.TimeoutError, TimeoutError):
            raise _Transient(f"no response within timeout={self.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise _Transient(f"connection failed: {type(e).__name__}: {e}") from None
        if status == 200:
            try:
                return json.loads(raw)
            except ValueError:
                text = _redact(raw.decode("utf-8", "replace"), self._api_key)
                raise _Transient(f"malformed JSON in response: {text[:80]!r}") from None
        error = self._http_error(status, url, raw, retry_after)
        if status == 400 and self._top_logprobs_auto and (top or 0) > _FALLBACK_TOP_LOGPROBS \
                and "logprobs" in _server_message(raw.decode("utf-8", "replace")).lower():
            if self._top_logprobs > _FALLBACK_TOP_LOGPROBS:
                log.warning("server refused top_logprobs=%d (%s); asking for %d", top, error, _FALLBACK_TOP_LOGPROBS)
                self._top_logprobs = _FALLBACK_TOP_LOGPROBS
            return await self._post(session, request)  # at once, not counted as a retry: nothing failed
        raise error

    def _http_error(self, status: int, url: URL, raw: bytes, retry_after: float | None = None) -> Exception:
        """The exception for an HTTP error: the openai package's for 401/403/404, else _Transient or _Rejected.

        Its reason names the status, the endpoint (without credentials or query) and the server's
        message; the API key is redacted from the body before anything is cut from it or kept.
        """
        text = _redact(raw.decode("utf-8", "replace"), self._api_key)
        where = _shown(url)
        reason = f"HTTP {status} from {where}: {_server_message(text)}"
        if status in _FATAL:
            return _status_error(status, where, text, reason)
        return _Transient(reason, retry_after) if status in _RETRY_STATUS else _Rejected(reason)

    # -- server capabilities -----------------------------------------------------------------

    async def _detect_server(self, session: aiohttp.ClientSession) -> str | None:
        """"vllm" for a vLLM server of 0.32 or later (it returns chosen tokens' log-probs), else "other".

        None when the server did not answer (not yet started, overloaded): the next call asks again.
        """
        try:
            models = await self._get_json(session, self._url("models"))
            owners = {m.get("owned_by") for m in (models or {}).get("data", []) if isinstance(m, dict)}
            if "vllm" not in owners:
                return "other"
            version = str((await self._get_json(session, self._url("version", root=True)) or {}).get("version", ""))
        except _Transient:
            return None
        found = re.match(r"(\d+)\.(\d+)", version)
        if found and (int(found[1]), int(found[2])) >= (0, 32):
            return "vllm"
        log.info("vLLM %s predates logprob_token_ids (0.32); reading top_logprobs", version or "(unknown version)")
        return "other"

    async def _resolve_label_ids(self, session: aiohttp.ClientSession, labels: Labels) -> tuple[int, ...] | None:
        """The label token ids to ask for, or None to read the top log-probs."""
        if labels.texts in self._label_ids:
            return self._label_ids[labels.texts]
        ids = None
        if self.label_token_ids is True or (self.label_token_ids == "auto" and self._server == "vllm"):
            ids = labels.token_ids
            if ids is None and self._tokenizer is not None:
                ids = label_token_ids(self._tokenizer, labels.texts)
            if ids is None and self._server == "vllm":  # the server's own tokenizer
                ids = await self._server_label_ids(session, labels.texts)
            if ids is None:
                raise ValueError("label_token_ids=True needs the label token ids: pass tokenizer=... "
                                 "or use a vLLM server (it has /tokenize)")
        if self._server is not None:  # else the server may yet turn out to be vLLM
            self._label_ids[labels.texts] = ids
        return ids

    async def _server_label_ids(self, session: aiohttp.ClientSession, texts: tuple[str, ...]) -> tuple[int, ...] | None:
        ids = []
        for text in texts:
            body = {"model": self.model, "prompt": text, "add_special_tokens": False}
            try:
                async with session.post(self._url("tokenize", root=True), json=body, proxy=self._proxy) as resp:
                    tokens = (await resp.json()).get("tokens") if resp.status == 200 else None
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                tokens = None
            if not tokens:
                return None
            if len(tokens) != 1:
                raise ValueError(f"label {text!r} is {len(tokens)} tokens {tokens} for the server's tokenizer, "
                                 "not one; labels must be single tokens")
            ids.append(tokens[0])
        return tuple(ids)

    async def _get_json(self, session: aiohttp.ClientSession, url: URL) -> dict | None:
        """The JSON of a 200 answer, else None; _Transient when no answer came (no connection, 429, 5xx)."""
        try:
            async with session.get(url, proxy=self._proxy) as resp:
                raw, status = await resp.read(), resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise _Transient(f"connection failed: {type(e).__name__}: {e}") from None
        # a wrong key, or no answer yet; a 404 is an answer (a gateway without the route)
        if status in (401, 403) or status in _RETRY_STATUS:
            raise self._http_error(status, url, raw)
        try:
            return json.loads(raw) if status == 200 else None
        except ValueError:
            return None

    def _url(self, path: str, root: bool = False) -> URL:
        """An endpoint with the default query, parsed once (``root``: vLLM's routes outside /v1)."""
        base = re.sub(r"/v1$", "", self.base_url) if root else self.base_url
        return URL(f"{base}/{path}").update_query(self._query)


def _extractor(labels: Labels, ids: tuple[int, ...] | None):
    """A function from a response to the (K,) label log-probs.

    Tokens are matched to labels by id when the server returns ``token_id:N`` forms, else by text
    after stripping whitespace ("7", " 7" and "7\\n" are one label, their probabilities summed);
    other tokens are ignored. A response without log-probs for the first token is rejected (the
    server ignores ``logprobs``; asking again returns the same), a malformed one is transient.
    """
    match = {t.strip(): k for k, t in enumerate(labels.texts)}
    match.update({f"{_TOKEN_ID_PREFIX}{t}": k for k, t in enumerate(ids or ())})
    k_labels = len(labels.texts)

    def extract(data: dict) -> list[float]:
        probs = [0.0] * k_labels
        try:
            logprobs = data["choices"][0].get("logprobs") or {}
            chat = "content" in logprobs
            first = logprobs.get("content" if chat else "top_logprobs")
            if not first:
                raise _Rejected("the server returned no logprobs for the first token (does it support logprobs?)")
            if chat:  # [{"token", "logprob", "top_logprobs": [{"token", "logprob"}, ...]}, ...]
                top = ((e["token"], e["logprob"]) for e in first[0]["top_logprobs"])
            else:  # completions: [{token: logprob}, ...]
                top = first[0].items()
            for token, logprob in top:
                k = match.get(token.strip())
                if k is not None:
                    probs[k] += math.exp(min(float(logprob), 0.0))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise _Transient("response has no usable first-token top logprobs") from None
        return [math.log(min(p, 1.0)) if p > 0.0 else -math.inf for p in probs]

    return extract


def _wait(state) -> float:
    """The server's Retry-After when it sent one, else exponential backoff with jitter."""
    exc = state.outcome.exception() if state.outcome is not None else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, 120.0)
    return _backoff(state)


_backoff = wait_exponential(multiplier=0.5, max=30.0) + wait_random(0.0, 0.5)  # 0.5 s, 1 s, 2 s, ... plus jitter


def _retry_after(headers: Mapping[str, str]) -> float | None:
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


def _server_message(text: str) -> str:
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


def _status_error(status: int, url: str, text: str, reason: str) -> openai.APIStatusError:
    """The openai package's exception for ``status`` (it wants the HTTP library's request/response objects)."""
    # openai builds its errors from its own HTTP library's Response (httpx, httpx2 in openai 3.x):
    # openai/_exceptions.py APIStatusError(message, *, response, body); take the module it uses.
    from openai import _exceptions

    http = getattr(_exceptions, "httpx2", None) or _exceptions.httpx
    response = http.Response(status, content=text.encode(), request=http.Request("POST", url))
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        body = body.get("error", body)
    return _FATAL[status](reason, response=response, body=body)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _shown(url: URL) -> str:
    """``url`` as messages show it: without user, password or query (they may hold credentials)."""
    return str((url.with_user(None) if url.absolute else url).with_query(None))


def _positive(value: Any) -> bool:
    return isinstance(value, numbers.Real) and 0 < value < math.inf


def _environment_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / NO_PROXY set for ``url``, as the openai package (httpx) reads them.

    Looked up once: aiohttp's ``trust_env`` does it (and a .netrc lookup) on a worker thread for
    every request, which costs more CPU than the request itself.
    """
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def _load_tokenizer(tokenizer: Any | None, trust_remote_code: bool) -> Any | None:
    if tokenizer is None or not isinstance(tokenizer, str):
        return tokenizer
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ImportError("loading a tokenizer by name needs transformers: pip install transformers") from None
    try:
        return AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer {tokenizer!r} (completions mode and prompt truncation need "
                         f"the model's tokenizer; pass tokenizer=NAME_OR_PATH or a tokenizer object): {e}") from None

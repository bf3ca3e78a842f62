"""The OpenAI-compatible engine: its options, and a call's prompts turned into requests and read back."""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import os
import sys
import threading
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Executor
from functools import partial
from typing import Any, Literal

import aiohttp
import numpy as np
from yarl import URL

from ...errors import InputError
from ...prompts import Labels, Prompts, label_token_ids
from ..base import Engine, LabelLogprobs, grouped_by_query
from .background import Background
from .backups import Backups
from .dispatch import Dispatcher, RequestParts
from .errors import Rejected, Transient, redact, shown
from .progress import Progress
from .protocol import endpoint, extractor, request_body, request_head
from .queue import Job, Slot
from .server import Detector, ServerKind, server_label_ids

log = logging.getLogger(__name__)

Content = Literal["data", "verbatim"]

_DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the openai package's default


class OpenAIEngine(Engine):
    """Label log-probabilities from an OpenAI-compatible server (vLLM, hosted APIs, gateways).

    Configured the way the ``openai`` package is: ``base_url`` (else ``OPENAI_BASE_URL``), an API
    key (else ``GENRANK_API_KEY``, else ``OPENAI_API_KEY``), ``default_headers`` and
    ``default_query`` for gateways and Azure-style deployments.

    ``mode="chat"`` sends the system+user messages to ``/chat/completions`` and the server applies
    the model's chat template; ``mode="completions"`` renders and tokenizes the prompt here with
    the model's ``tokenizer`` and sends the token ids to ``/completions``. On a vLLM server
    (0.32 or later) the request asks for exactly the label tokens (``logprob_token_ids``), so no
    label is ever missing; elsewhere it asks for the top ``top_logprobs`` tokens (20, or 5 where
    the server allows no more) and labels outside them get probability 0 (see ``label_mass``).
    Which server it is, is asked once before the first request (``/models``, ``/version``,
    retried like a request); ``server="vllm"`` or ``"other"`` names it instead. If it cannot be
    told, the call fails: a run never scores one way and then another.

    Content is data (``content="data"``, the default): a query or document holding special-token
    text such as ``<|im_end|>`` never becomes a control token on the server. Completions mode sends
    genrank's token ids. In chat mode with a ``tokenizer``, a vLLM server gets genrank's token ids
    too (on ``/completions``, rendered with the tokenizer's chat template); other servers get the
    messages with a word joiner (U+2060) after the first character of each special-token string,
    and those pairs are reported in ``ScoredPairs.altered``. Without a tokenizer content goes as it
    is (logged once). ``content="verbatim"`` sends chat content unchanged. A template with an
    assistant prefix in chat mode needs a vLLM server (``continue_final_message``).

    Up to ``concurrency`` requests are in flight for the whole engine, whichever threads and event
    loops its calls come from (a request backing off before a retry does not count); calls are
    thread-safe, and the Reranker keeps ``max_calls_in_flight`` of them going. 429, 5xx (but 501
    and 505), timeouts, dropped connections and malformed responses are retried up to
    ``max_retries`` times with exponential backoff and jitter; a 429 or ``Retry-After`` pauses
    every request of the engine until the time it names. A pair that still fails, or that the
    server rejects, is reported in ``LabelLogprobs.errors`` and the rest complete. 401, 403 and
    404 raise at once, and so does a rejection that the first 8 requests all got before any
    succeeded (a setup error): both as the ``openai`` package's exception, ending every call.

    Backup requests: a request with no answer after the 99th percentile of the last 1,000
    answers' latencies (at least 50 ms, once 50 are known) is sent once more; the first good
    answer wins and the other is cancelled. Scoring requests are idempotent, so a duplicate
    cannot change a result. ``backup_requests`` (default 0.05) is the budget: each request sent
    earns that share of a backup, at most 10 saved up; 0 turns backups off. Backups have places of
    their own beyond ``concurrency`` (that share of it, rounded up). A request and its backup are
    one attempt for ``max_retries``.

    ``tokenizer`` (a name, a path or a tokenizer object; in completions mode the model's by
    default) lets genrank truncate prompts to ``max_length``. ``requests_per_second`` and
    ``tokens_per_minute`` pace requests on the client (tokens counted with the tokenizer, else
    estimated at 4 characters a token). ``show_progress`` (default: when stderr is a terminal)
    shows one bar for the calls in flight, with pairs/s, failures and backups so far.

    ``logprobs_mode="raw_logits"`` says that the server is a vLLM started with
    ``--logprobs-mode raw_logits``: its "logprobs" are then the label tokens' raw logits, which
    recipes scored by a raw logit need (bge-reranker-v2-gemma); the engine answers only
    ``Labels(kind="logits")`` then. genrank cannot check the server's mode: state it truly.

    ``close()`` (or ``with engine:``) ends the background thread and sessions; ``aclose()`` (or
    ``async with engine:``) also awaits the running loop's session. Closing is final (a later call
    raises RuntimeError) and safe from any thread, more than once; calls in flight fail. An
    engine not closed is closed when garbage-collected, when its event loops end, or at exit.
    """

    kind = "openai"
    native_async = True
    raw_logits_hint = ("If the server is a vLLM started with --logprobs-mode raw_logits, pass "
                       "logprobs_mode='raw_logits' to OpenAIEngine")

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 mode: Literal["chat", "completions"] = "chat", content: Content = "data",
                 server: Literal["auto", "vllm", "other"] = "auto", concurrency: int = 64,
                 max_calls_in_flight: int = 8, timeout: float = 60.0, max_retries: int = 6,
                 backup_requests: float = 0.05,
                 top_logprobs: int | None = None, label_token_ids: bool | Literal["auto"] = "auto",
                 tokenizer: Any | None = None, requests_per_second: float | None = None,
                 tokens_per_minute: float | None = None, default_headers: Mapping[str, str] | None = None,
                 default_query: Mapping[str, str | int | float] | None = None,
                 show_progress: bool | None = None, trust_remote_code: bool = False,
                 logprobs_mode: Literal["raw_logprobs", "raw_logits"] = "raw_logprobs"):
        if mode not in ("chat", "completions"):
            raise InputError(f"mode must be 'chat' or 'completions', got {mode!r}")
        if content not in ("data", "verbatim"):
            raise InputError(f"content must be 'data' (special-token text in a query or document is never read as "
                             f"a control token) or 'verbatim' (chat content sent unchanged), got {content!r}")
        if content == "verbatim" and mode == "completions":
            raise InputError("content='verbatim' is for chat mode; completions mode sends genrank's token ids, "
                             "where content is always data")
        if server not in ("auto", "vllm", "other"):
            raise InputError(f"server must be 'auto' (asked of the server), 'vllm' (vLLM 0.32 or later) or 'other', "
                             f"got {server!r}")
        for name, value in (("concurrency", concurrency), ("max_calls_in_flight", max_calls_in_flight)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not _positive(timeout):
            raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
        for name, rate in (("requests_per_second", requests_per_second), ("tokens_per_minute", tokens_per_minute)):
            if rate is not None and not _positive(rate):
                raise InputError(f"{name} must be a positive number or None, got {rate!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise InputError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if isinstance(backup_requests, bool) or not isinstance(backup_requests, numbers.Real) \
                or not 0 <= backup_requests <= 1:
            raise InputError("backup_requests must be the share of requests that may be sent a second time when "
                             f"the first has no answer in time, from 0 (never) to 1, got {backup_requests!r}")
        if top_logprobs is not None and (not isinstance(top_logprobs, int) or not 1 <= top_logprobs <= 20):
            raise InputError("top_logprobs must be an integer 1..20 or None (as many as allowed), "
                             f"got {top_logprobs!r}")
        if logprobs_mode not in ("raw_logprobs", "raw_logits"):
            raise InputError("logprobs_mode must be 'raw_logprobs' (the server's default) or 'raw_logits' (a vLLM "
                             f"server started with --logprobs-mode raw_logits), got {logprobs_mode!r}")
        if label_token_ids not in ("auto", True, False):
            raise InputError(f"label_token_ids must be 'auto', True or False, got {label_token_ids!r}")
        self.model = model
        self.mode = mode
        self.content = content
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE_URL).rstrip("/")
        self.concurrency = concurrency
        self.max_calls_in_flight = max_calls_in_flight
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backup_requests = float(backup_requests)
        self.label_token_ids = label_token_ids
        self.logprobs_mode = logprobs_mode
        self.label_kinds = ("logits",) if logprobs_mode == "raw_logits" else ("logprobs",)
        self.show_progress = show_progress
        self._api_key = api_key or os.environ.get("GENRANK_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if self._api_key and URL(self.base_url).user is not None:  # aiohttp allows one kind of credentials
            raise InputError("base_url holds a user name and there is an API key; give one or the other")
        headers = {"Content-Type": "application/json", **(default_headers or {})}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._query = {k: str(v) for k, v in (default_query or {}).items()}
        self._tokenizer = _load_tokenizer(tokenizer or (model if mode == "completions" else None), trust_remote_code)
        proxy = _environment_proxy(self.base_url)
        self._server = Detector(server, self.base_url, self._query, self._api_key, proxy, max_retries)
        self._label_ids: dict[tuple[str, ...], tuple[int, ...] | None] = {}
        self._warned_no_tokenizer = False
        self._progress = Progress()
        self._dispatcher = Dispatcher(
            base_url=self.base_url, api_key=self._api_key, headers=headers, proxy=proxy,
            concurrency=concurrency, timeout=self.timeout, max_retries=max_retries,
            backups=Backups(self.backup_requests, concurrency) if self.backup_requests else None,
            requests_per_second=requests_per_second, tokens_per_minute=tokens_per_minute, top_logprobs=top_logprobs,
            progress=self._progress)
        self._background = Background()
        weakref.finalize(self, _close, self._dispatcher, self._background)  # holds no reference to self

    @property
    def prompt_format(self) -> Literal["tokens", "chat"]:
        return "chat" if self.mode == "chat" else "tokens"

    @property
    def tokenizer(self) -> Any | None:
        return self._tokenizer

    @property
    def model_name(self) -> str:
        """The model's name, as sent to the server."""
        return self.model

    @property
    def is_closed(self) -> bool:
        """Whether ``close`` or ``aclose`` was called (closing is final)."""
        return self._dispatcher.closed

    @property
    def scoring_method(self) -> str:
        """What is sent and what is read, e.g. "token ids; label token ids" (asks the server's kind if not yet known)."""
        server = self._server.kind
        if server is None:
            if threading.current_thread() is self._background.thread:
                raise RuntimeError("scoring_method was read on the engine's own event loop")
            self._check_open()
            server = self._background.submit(self._server_kind).result()
        sent = "chat messages" if self._sends_chat(server, self._tokenizer is not None) else "token ids"
        if self.content == "verbatim":
            sent += " (content verbatim)"
        if self._reads_label_ids(server):
            raw = "; raw logits" if self.logprobs_mode == "raw_logits" else ""
            return f"{sent}; label token ids{raw}"
        top = self._dispatcher.top_logprobs if not self._dispatcher.top_logprobs_auto else "20 (5 if refused)"
        return f"{sent}; top {top} log-probs"

    def __repr__(self) -> str:  # never shows the API key or a password in base_url
        return (f"OpenAIEngine(model={self.model!r}, base_url={shown(URL(self.base_url))!r}, mode={self.mode!r}, "
                f"concurrency={self.concurrency})")

    # -- public API --------------------------------------------------------------------------

    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        """Blocking, thread-safe: runs on the engine's background event loop (works inside a running loop too)."""
        if threading.current_thread() is self._background.thread:
            raise RuntimeError("label_logprobs was called from the engine's own event loop; await alabel_logprobs")
        self._check_open()
        future = self._background.submit(self.alabel_logprobs, prompts, labels)
        try:
            return future.result()
        except CancelledError:  # its loop ended before its queue could fail it
            if self._dispatcher.closed:
                raise RuntimeError("the engine was closed while this call was running") from None
            raise
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: drop this call's requests
            raise

    async def alabel_logprobs(self, prompts: Prompts, labels: Labels, *,
                              executor: Executor | None = None) -> LabelLogprobs:
        """The label log-probabilities of every prompt, one request each, in input order.

        Runs on the caller's event loop (``executor`` is not used); cancelling the caller drops
        its queued requests and cancels those in flight.
        """
        self._check_open()
        n = len(prompts)
        values = np.full((n, len(labels.texts)), -np.inf)
        errors: dict[int, str] = {}
        if labels.kind not in self.label_kinds:
            raise InputError(f"OpenAIEngine(logprobs_mode={self.logprobs_mode!r}) returns label {self.label_kinds[0]}, "
                             f"not {labels.kind}" + (f". {self.raw_logits_hint}" if labels.kind == "logits" else ""))
        if not n:
            return LabelLogprobs(values, kind=labels.kind)
        queue = self._dispatcher.queue()
        server = await self._server.get(queue.session)
        request, ids, altered = await self._requests(queue.session, server, prompts, labels)
        if labels.kind == "logits" and ids is None:
            raise InputError("raw label logits need a vLLM server (0.32 or later) that returns the logprobs of "
                             "chosen token ids (logprob_token_ids); this server does not")
        extract = extractor(labels, ids, raw=labels.kind == "logits")
        fetch_one, api_key = self._dispatcher.fetch, self._api_key
        show = self.show_progress if self.show_progress is not None else sys.stderr.isatty()
        with self._progress.call(n, show) as progress:

            async def fetch(i: int, slot: Slot) -> None:
                try:
                    values[i] = await fetch_one(queue, slot, partial(request, i), extract)
                except (Transient, Rejected) as e:
                    errors[i] = redact(str(e), api_key)
                    progress.failed()
                progress.done()

            # grouped by query: a server's prefix cache reuses each query's prefix
            await queue.run(Job(grouped_by_query(prompts), fetch))
        if errors:
            log.warning("%d of %d requests failed; first: %s", len(errors), n, errors[min(errors)])
        return LabelLogprobs(values, errors, altered, labels.kind)

    def close(self) -> None:
        """End the background thread and close the sessions (those of other event loops at their next turn)."""
        _close(self._dispatcher, self._background)

    async def aclose(self) -> None:
        """``close``, awaiting the running event loop's session."""
        await self._dispatcher.aclose()
        await asyncio.to_thread(self._background.stop)

    async def _server_kind(self) -> ServerKind:
        return await self._server.get(self._dispatcher.queue().session)

    def _check_open(self) -> None:
        if self._dispatcher.closed:
            raise RuntimeError("the engine is closed")

    # -- requests ----------------------------------------------------------------------------

    async def _requests(self, session: aiohttp.ClientSession, server: ServerKind, prompts: Prompts,
                        labels: Labels) -> tuple[Callable[[int], RequestParts], tuple[int, ...] | None, set[int]]:
        """A function from prompt index to (endpoint, JSON body, token estimate, top logprobs asked), the ids
        and the indices of prompts whose content is sent changed.

        The ids are the label token ids asked for, None where the top log-probs are read.
        """
        ids = await self._resolve_label_ids(session, server, labels)
        altered: set[int] = set()
        chat = self._sends_chat(server, prompts.token_ids is not None)
        prefix = prompts.template.assistant_prefix if chat else None
        if chat:
            neutralise = self.content == "data"
            if prompts.special_tokens is None and not self._warned_no_tokenizer:
                log.warning("no tokenizer for %r: prompts are sent whole, not truncated to max_length, and "
                            "special-token text in a query or document (e.g. '<|im_end|>') reaches the server's "
                            "chat template as it is, where it may be read as control tokens (pass tokenizer=...)",
                            self.model)
                self._warned_no_tokenizer = True
            payloads: list[Any] = prompts.chats(neutralise=neutralise)
            if neutralise:
                altered = prompts.holding_special_tokens()
            if prefix:
                if server != "vllm":
                    raise InputError(
                        f"template {prompts.template.name!r} has an assistant prefix, which chat mode can send "
                        f"only to a vLLM server (continue_final_message); {shown(URL(self.base_url))} is not one. "
                        "Use mode='completions' with the model's tokenizer.")
                payloads = [c + [{"role": "assistant", "content": prefix}] for c in payloads]
        elif prompts.token_ids is None:
            raise InputError("completions mode needs the model's tokenizer (tokenizer=...)")
        else:
            payloads = prompts.token_ids
        url = endpoint(self.base_url, "chat/completions" if chat else "completions", self._query)
        head = request_head(self.model, chat=chat, label_ids=ids, continue_final_message=bool(prefix))
        lengths = (list(map(len, prompts.token_ids)) if prompts.token_ids is not None
                   else [sum(len(m["content"]) for m in c) // 4 for c in payloads])  # ~4 characters a token
        dispatcher = self._dispatcher

        def request(i: int) -> RequestParts:
            top = None if ids is not None else dispatcher.top_logprobs  # read at each post: it may step down
            return url, request_body(head, payloads[i], chat=chat, top_logprobs=top), lengths[i] + 1, top

        return request, ids, altered

    def _sends_chat(self, server: ServerKind, tokenized: bool) -> bool:
        """Chat messages to /chat/completions; else genrank's token ids to /completions (always in completions
        mode; in chat mode to a vLLM server, content as data, when the prompts are ``tokenized``)."""
        return self.mode == "chat" and not (self.content == "data" and tokenized and server == "vllm")

    def _reads_label_ids(self, server: ServerKind) -> bool:
        """The label tokens' log-probs asked by id; else the top log-probs read."""
        return self.label_token_ids is True or (self.label_token_ids == "auto" and server == "vllm")

    async def _resolve_label_ids(self, session: aiohttp.ClientSession, server: ServerKind,
                                 labels: Labels) -> tuple[int, ...] | None:
        """The label token ids to ask for, or None to read the top log-probs."""
        if labels.texts in self._label_ids:
            return self._label_ids[labels.texts]
        ids = None
        if self._reads_label_ids(server):
            ids = labels.token_ids
            if ids is None and self._tokenizer is not None:
                ids = label_token_ids(self._tokenizer, labels.texts)
            if ids is None and server == "vllm":  # the server's own tokenizer
                ids = await server_label_ids(session, endpoint(self.base_url, "tokenize", self._query, root=True),
                                             self.model, labels.texts, self._dispatcher.proxy)
            if ids is None:
                raise InputError("label_token_ids=True needs the label token ids: pass tokenizer=... "
                                 "or use a vLLM server (it has /tokenize)")
        self._label_ids[labels.texts] = ids
        return ids


def _close(dispatcher: Dispatcher, background: Background) -> None:
    """Close an engine's queues and background thread (also its finalizer: it must not hold the engine)."""
    dispatcher.close()
    background.stop()


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

        from ..loading import pretrained
    except ImportError:
        raise ImportError("loading a tokenizer by name needs transformers: pip install transformers") from None
    try:
        return pretrained(AutoTokenizer.from_pretrained, tokenizer, filename="tokenizer_config.json",
                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer {tokenizer!r} (completions mode and prompt truncation need "
                         f"the model's tokenizer; pass tokenizer=NAME_OR_PATH or a tokenizer object): {e}") from None

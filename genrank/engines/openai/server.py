"""What kind of server an engine talks to, found once before its first request, and the server's label token ids."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Literal

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from yarl import URL

from ...errors import InputError
from .errors import RETRY_STATUS, Transient, connection_error, http_error, retry_wait, shown
from .protocol import endpoint, owned_by_vllm, returns_chosen_logprobs

log = logging.getLogger(__name__)

ServerKind = Literal["vllm", "other"]  # vllm: 0.32 or later (it returns chosen tokens' log-probs)


class Detector:
    """The server's kind: given (``server=``), or asked of the server once, by every event loop and thread alike.

    Concurrent first calls share one detection; its transient failures are retried (tenacity,
    ``max_retries`` times), and if the kind is still unknown the call fails with a message that
    says how to name it, rather than scoring one way now and another later. The next call asks
    again (a server not yet up).
    """

    def __init__(self, kind: Literal["auto", "vllm", "other"], base_url: str, query: Mapping[str, str],
                 secret: str | None, proxy: str | None, max_retries: int):
        self.kind: ServerKind | None = None if kind == "auto" else kind
        self._base_url, self._query, self._secret, self._proxy = base_url, query, secret, proxy
        self._max_retries = max_retries
        self._lock = threading.Lock()
        self._detecting: Future[ServerKind] | None = None

    async def get(self, session: aiohttp.ClientSession) -> ServerKind:
        """The kind, detected with ``session`` (the running loop's) if no call has yet."""
        while self.kind is None:
            with self._lock:
                if self.kind is not None:
                    break
                shared, mine = self._detecting, self._detecting is None
                if mine:
                    shared = self._detecting = Future()
            if not mine:
                try:  # shielded: a waiter's cancel must not cancel the others' detection
                    return await asyncio.shield(asyncio.wrap_future(shared))
                except _Abandoned:
                    continue  # its caller was cancelled: detect again
            try:
                kind = await self._detect(session)
            except BaseException as e:
                with self._lock:
                    self._detecting = None
                shared.set_exception(_Abandoned() if isinstance(e, asyncio.CancelledError) else e)
                raise
            with self._lock:
                self.kind, self._detecting = kind, None
            shared.set_result(kind)
        return self.kind

    async def _detect(self, session: aiohttp.ClientSession) -> ServerKind:
        retrying = AsyncRetrying(stop=stop_after_attempt(self._max_retries + 1), wait=retry_wait,
                                 retry=retry_if_exception_type(Transient), reraise=True)
        models_url = endpoint(self._base_url, "models", self._query)
        try:
            async for attempt in retrying:
                with attempt:
                    models = await self._get_json(session, models_url)
                    if not owned_by_vllm(models):
                        return "other"
                    version = await self._get_json(session, endpoint(self._base_url, "version", self._query, True))
        except Transient as e:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise connection_error(models_url, (
                f"cannot tell what kind of server {shown(URL(self._base_url))} is: {e} (after {attempts} "
                f"attempt{'s' if attempts > 1 else ''}); name it with the engine option server='vllm' (vLLM 0.32 or "
                "later) or server='other' (--engine-arg server=... on the command line)")) from None
        version = str((version or {}).get("version", ""))
        if returns_chosen_logprobs(version):
            return "vllm"
        log.info("vLLM %s predates logprob_token_ids (0.32); reading top_logprobs", version or "(unknown version)")
        return "other"

    async def _get_json(self, session: aiohttp.ClientSession, url: URL) -> dict | None:
        """The JSON of a 200 answer, else None; Transient when no answer came (no connection, 429, 5xx)."""
        try:
            async with session.get(url, proxy=self._proxy) as resp:
                raw, status = await resp.read(), resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise Transient(f"connection failed: {type(e).__name__}: {e}") from None
        # a wrong key, or no answer yet; a 404 is an answer (a gateway without the route)
        if status in (401, 403) or status in RETRY_STATUS:
            raise http_error(status, url, raw, self._secret)
        try:
            return json.loads(raw) if status == 200 else None
        except ValueError:
            return None


class _Abandoned(Exception):
    """The detecting call was cancelled before it knew."""


async def server_label_ids(session: aiohttp.ClientSession, url: URL, model: str, texts: tuple[str, ...],
                           proxy: str | None) -> tuple[int, ...] | None:
    """The labels' token ids by a vLLM server's ``/tokenize`` (``url``); None if it does not say."""
    ids = []
    for text in texts:
        body = {"model": model, "prompt": text, "add_special_tokens": False}
        try:
            async with session.post(url, json=body, proxy=proxy) as resp:
                tokens = (await resp.json()).get("tokens") if resp.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            tokens = None
        if not tokens:
            return None
        if len(tokens) != 1:
            raise InputError(f"label {text!r} is {len(tokens)} tokens {tokens} for the server's tokenizer, "
                             "not one; labels must be single tokens")
        ids.append(tokens[0])
    return tuple(ids)

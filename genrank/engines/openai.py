"""OpenAI-compatible remote driver: many requests in flight, exact label log-probabilities, faults survived.

Requests go out through one ``aiohttp`` session per event loop (a bare client costs a fraction of
the CPU per request of the ``openai`` SDK's, and client CPU decides throughput at scale),
configured the way the ``openai`` package is configured: ``base_url`` (else ``OPENAI_BASE_URL``),
an API key (else ``GENRANK_API_KEY``, else ``OPENAI_API_KEY``), ``default_headers`` and
``default_query`` for gateways and Azure-style deployments.

Every call's requests join one queue, started first come, first served while fewer than
``concurrency`` are in flight (one backing off before a retry does not count): the blocking
``label_logprobs`` hands them to an event loop on a background thread (started on first use, one
session for the engine's life), so calls from several threads share the session and a pair in
retry back-off holds up only itself; ``alabel_logprobs`` runs on the caller's event loop, with
one session and queue per loop, and cancelling it drops its requests. A 429 or ``Retry-After``
pauses every request on the queue until the time it names.

Against tail latency, a request with no answer after the 99th percentile of recent latencies is
sent once more (a backup, as in Finagle's ``BackupRequestFilter``, gRPC hedging and "The Tail at
Scale"); the first answer wins and the other request is cancelled. Scoring requests are
idempotent (temperature 0, one token, no server state), so a duplicate is safe. A budget bounds
backups to a share of requests, so a server slow for everyone does not get twice the load.
Retries are tenacity's; a request's first attempt goes out without its machinery, which costs
more client CPU than the request.

Errors that every request shares stop the call instead of failing every pair: 401, 403 and 404,
and the same rejection (4xx, 501, 505, or an answer without logprobs) for the first requests of
an engine before any has succeeded. They are raised as the ``openai`` package's exception types.
Content is data: in chat mode special-token text in a query or document does not become a control
token on the server (see ``OpenAIEngine``).
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
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
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

Content = Literal["data", "verbatim"]

_DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the openai package's default
_MAX_TOP_LOGPROBS = 20  # OpenAI's and vLLM's (default --max-logprobs) limit
_FALLBACK_TOP_LOGPROBS = 5  # some hosted APIs allow no more
_FATAL = frozenset({401, 403, 404})  # configuration errors: raised at once
_RETRY_STATUS = frozenset({408, 409, 429}) | (frozenset(range(500, 600)) - {501, 505})  # 501/505: never will
_STATUS_ERRORS = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
                  404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
                  429: openai.RateLimitError}  # the openai package's classes (its _make_status_error)
# Until a request succeeds, at most this many are in flight, and this many rejected alike stop the
# run: a handful of pairs that fail on their own (too long, say) rarely come first and all alike,
# and a misconfigured run (a model that takes no max_tokens) costs this many requests, not millions.
_SETUP_PROBES = 8
_BARE_429_PAUSE = 0.5  # seconds every request waits after a 429 that names no time (the first backoff step)
_MAX_WAIT = 120.0  # the longest Retry-After honoured, seconds
_TOKEN_ID_PREFIX = "token_id:"  # vLLM's token form with return_tokens_as_token_ids
# Backup requests: sent after the 99th percentile of the last _LATENCY_WINDOW answers' latencies
# (once _MIN_LATENCIES are known; recomputed every _LATENCY_WINDOW // 5 answers), never sooner
# than _MIN_BACKUP_DELAY; each request sent earns `backup_requests` of a backup, at most
# _BACKUP_BURST saved up (a token bucket, like gRPC's retry throttling and Finagle's RetryBudget).
_BACKUP_PERCENTILE = 0.99
_LATENCY_WINDOW = 1000
_MIN_LATENCIES = 50
_MIN_BACKUP_DELAY = 0.05  # seconds
_BACKUP_BURST = 10.0
_BACKUP_TICK = 0.005  # seconds: late requests are looked for this often at most

_Request = Callable[[], tuple[URL, bytes, int, int | None]]  # (endpoint, JSON body, token estimate, top logprobs asked)
_Extract = Callable[[dict], list[float]]  # a response to its (K,) label log-probs


class _Transient(Exception):
    """A failure worth retrying: 429, 5xx, timeout, dropped connection, malformed response."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Rejected(Exception):
    """Retrying will not help: the server refused the request (4xx but 401/403/404, 501, 505) or gave no logprobs.

    ``status`` is None for an answer without logprobs; ``text`` is the server's body (redacted),
    ``where`` the endpoint as messages show it.
    """

    def __init__(self, reason: str, status: int | None = None, text: str = "", where: str | None = None):
        super().__init__(reason)
        self.status, self.text, self.where = status, text, where


class _RateLimiter:
    """Spaces requests so at most ``rate`` units start per ``period`` seconds, with no burst.

    A reservation schedule (each acquisition books the next free slot) rather than a bucket such
    as aiolimiter's ``AsyncLimiter``, which lets a whole period's budget go at once (a minute of
    tokens in one burst, what hosted APIs answer with 429s), belongs to one event loop and refuses
    a request larger than the budget. This holds only a timestamp, so one pace holds across the
    engine's event loops (the background one and callers'); a request larger than ``rate``
    books a whole period.
    """

    def __init__(self, rate: float, period: float):
        self.rate, self.interval = rate, period / rate
        self._next = 0.0
        self._lock = threading.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + min(amount, self.rate) * self.interval
        if start > now:
            await asyncio.sleep(start - now)


class _Health:
    """Whether any request has succeeded yet, and how many first requests were rejected alike."""

    def __init__(self) -> None:
        self.succeeded = False
        self._lock = threading.Lock()
        self._last: tuple[int | None, str] | None = None
        self._alike = 0

    def rejected(self, e: _Rejected) -> int:
        """Record a rejection; the number of rejections like it in a row before any success (0 after one)."""
        if self.succeeded:
            return 0
        with self._lock:
            key = (e.status, str(e))
            self._alike = self._alike + 1 if key == self._last else 1
            self._last = key
            return self._alike


class _Backups:
    """When to send a backup of a request, from the latencies of recent answers, and the budget for them.

    Shared by the engine's event loops (a server's latencies are the same for all).
    """

    def __init__(self, share: float, concurrency: int):
        self.share = share
        self.places = math.ceil(concurrency * share)  # backups in flight at most, beyond ``concurrency``
        self.delay: float | None = None  # seconds after sending; None until enough answers are known
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._unseen = 0  # latencies added since the delay was computed
        self._tokens = 0.0
        self._lock = threading.Lock()

    def sent(self) -> None:
        """A request (not a backup) went out: it earns ``share`` of a backup."""
        with self._lock:
            self._tokens = min(self._tokens + self.share, _BACKUP_BURST)

    def take(self) -> bool:
        """Spend one backup from the budget; False when the budget is spent."""
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def answered(self, seconds: float) -> None:
        """Record the latency of a good answer (from sending to its body)."""
        with self._lock:
            self._latencies.append(seconds)
            self._unseen += 1
            if len(self._latencies) >= _MIN_LATENCIES and (self.delay is None
                                                           or self._unseen >= _LATENCY_WINDOW // 5):
                ordered = sorted(self._latencies)
                self.delay = max(ordered[int(_BACKUP_PERCENTILE * (len(ordered) - 1))], _MIN_BACKUP_DELAY)
                self._unseen = 0


class _Hedge:
    """A request that may get a backup, and the race between them (see ``OpenAIEngine._attempt``).

    The request runs in the task that made this (the owner). Its queue calls ``late`` if the
    request has had no answer for the backup delay; the engine then sends the backup in a task
    of its own (unless the budget is spent), and a backup that answers while the owner still
    waits cancels the owner's request, whose ``CancelledError`` ``took_over`` tells from a
    cancel from outside. The request's parts are held as they are, not in a partial: this is
    made for every request, and what lives as long as a request costs garbage-collector time.
    """

    __slots__ = ("_engine", "_extract", "_owner", "_queue", "_request", "backup", "racing", "since", "won")

    def __init__(self, engine: OpenAIEngine, queue: _Queue, request: _Request, extract: _Extract):
        self._engine, self._queue, self._request, self._extract = engine, queue, request, extract
        self._owner = asyncio.current_task()
        self.since = math.inf  # loop time the request went out (or the budget last refused its backup)
        self.backup: asyncio.Task | None = None
        self.racing = True  # the owner waits for its request
        self.won = False  # the backup answered first and cancelled the request

    def late(self) -> bool:
        """Send the backup of a request still out; False when the budget refused it (ask again later)."""
        if self.racing and self.backup is None:
            self.backup = self._engine._send_backup(self._queue, self._request, self._extract)
            if self.backup is None:
                return False
            self.backup.add_done_callback(self._answered)
        return True

    def took_over(self) -> bool:
        """Whether the owner's request was cancelled only because the backup answered first."""
        if not self.won:
            return False
        uncancel = getattr(self._owner, "uncancel", None)  # Python 3.11+ counts cancel requests
        return uncancel is None or uncancel() == 0

    def stop(self) -> asyncio.Task | None:
        """End the race and let go of the request (the queue may hold this a while yet); the backup if still out."""
        self.racing = False
        self._engine = self._queue = self._request = self._extract = self._owner = None
        return self.backup if self.backup is not None and not self.backup.done() else None

    def _answered(self, backup: asyncio.Task) -> None:
        if not backup.cancelled() and backup.exception() is None and self.racing:  # a failure is dropped
            self.won = True
            self._owner.cancel()


class _Job:
    """One call's requests on a queue: the prompt indices still to send, those in flight, and the outcome."""

    def __init__(self, order: list[int], fetch: Callable[[int, _Slot], Awaitable[None]]):
        self._pending = iter(order)
        self.fetch = fetch  # sends prompt i (in its slot) and records its result or error
        self.remaining = len(order)
        self.running: set[asyncio.Task] = set()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def next_index(self) -> int | None:
        """The next prompt to send; None when all are sent or the call is over (done, failed or cancelled)."""
        return None if self.done.done() else next(self._pending, None)

    def finished_one(self) -> None:
        self.remaining -= 1
        if not self.remaining and not self.done.done():
            self.done.set_result(None)

    def fail(self, error: BaseException) -> None:
        """End the call with ``error``: its queued requests are dropped and those in flight cancelled."""
        if not self.done.done():
            self.done.set_exception(error)
        current = asyncio.current_task()
        for task in self.running:
            if task is not current:
                task.cancel()

    async def stop(self) -> None:
        """Cancel the requests in flight and wait until they have ended."""
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Slot:
    """One request's place among the ``concurrency`` in flight: held while it is sent, let go while it backs off."""

    def __init__(self, slots: asyncio.Semaphore):
        self._slots, self._held = slots, True  # acquired for it by the queue

    async def sleep(self, seconds: float) -> None:
        """Back off without holding a place, then take one again (tenacity's ``sleep``)."""
        self.release()
        await asyncio.sleep(seconds)
        await self._slots.acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


class _Queue:
    """One event loop's session and request queue, kept for the loop's life.

    Calls' requests are started first come, first served, while fewer than ``concurrency`` are in
    flight (a request backing off before a retry does not count). A 429 or a ``Retry-After``
    pauses every request until the time it names. Until a request has succeeded, at most
    ``_SETUP_PROBES`` are in flight. Backups of late requests (see ``watch``) have places of
    their own, ``_Backups.places``. The queue ends, and its session closes, on ``aclose``, on
    ``stop_threadsafe`` or when the loop cancels its tasks at its end (``asyncio.run`` does).
    """

    def __init__(self, concurrency: int, session: Callable[[], aiohttp.ClientSession], health: _Health,
                 backups: _Backups | None):
        self.loop = asyncio.get_running_loop()
        self.session = session()
        self.health = health
        self.paused_until = 0.0  # loop time
        self._slots = asyncio.Semaphore(concurrency)
        self.backups = backups
        self.backup_slots = asyncio.Semaphore(backups.places if backups is not None else 0)
        self._watched: deque[_Hedge] = deque()  # requests that may get a backup, in sending order
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._jobs: deque[_Job] = deque()  # calls with requests still to start, oldest first
        self._active: set[_Job] = set()  # calls not yet returned
        self._arrived = asyncio.Event()
        self._stopping = asyncio.Event()
        self._probes = 0
        self._probe_ended = asyncio.Event()
        self._task = self.loop.create_task(self._serve())

    @property
    def closing(self) -> bool:
        return self._stopping.is_set() or self._task.done()

    async def run(self, job: _Job) -> None:
        """Send ``job``'s requests and wait for them; cancelling the caller cancels them."""
        if self.closing:
            raise RuntimeError("the engine's request queue is closed")
        self._active.add(job)
        self._jobs.append(job)
        self._arrived.set()
        try:
            await job.done
        except BaseException:
            await job.stop()  # cancelled tasks are awaited before the caller goes on
            raise
        finally:
            self._active.discard(job)

    def fail_all(self, error: BaseException) -> None:
        """End every call on this queue with ``error`` (one that every request shares)."""
        for job in list(self._active):
            job.fail(error)

    def pause(self, seconds: float) -> None:
        """No request is sent for ``seconds`` from now (the server asked for a break)."""
        self.paused_until = max(self.paused_until, self.loop.time() + min(seconds, _MAX_WAIT))

    async def wait_if_paused(self) -> None:
        while (delay := self.paused_until - self.loop.time()) > 0:
            await asyncio.sleep(delay)

    def watch(self, hedge: _Hedge) -> None:
        """``hedge``'s request goes out now: call ``hedge.late()`` if it has no answer after the backup delay.

        A request sent before the delay is known is late once it is known and has passed. A late
        request whose backup the budget refused is looked at again after another delay: by then
        the budget has grown, and requests that were only held up by a stall (of the server, or
        of this event loop: a garbage collection) have their answers, so the budget goes to the
        requests that are really stuck. One timer serves all the requests on the queue, every
        ``_BACKUP_TICK`` seconds at most (one per request would cost more CPU than the rest of the
        watch), and none while none is out.
        """
        hedge.since = self.loop.time()
        self._watched.append(hedge)
        if self._sweep_timer is None:
            self._sweep_timer = self.loop.call_at(hedge.since + (self.backups.delay or _MIN_BACKUP_DELAY),
                                                  self._sweep)

    def _sweep(self) -> None:
        now, delay, watched = self.loop.time(), self.backups.delay, self._watched
        while watched and not watched[0].racing:  # answered
            watched.popleft()
        if delay is not None:
            while watched and watched[0].since + delay <= now:
                hedge = watched.popleft()
                if not hedge.late():
                    hedge.since = now
                    watched.append(hedge)
        self._sweep_timer = None
        if watched:  # next when the oldest is due, or (the delay not yet known) in a while
            due = watched[0].since + delay if delay is not None else now + _MIN_BACKUP_DELAY
            self._sweep_timer = self.loop.call_at(max(due, now + _BACKUP_TICK), self._sweep)

    async def aclose(self) -> None:
        self._stopping.set()
        await asyncio.gather(self._task, return_exceptions=True)

    def stop_threadsafe(self) -> None:
        """Ask the queue to close from any thread (a no-op once its loop has closed)."""
        try:
            self.loop.call_soon_threadsafe(self._stopping.set)
        except RuntimeError:
            pass

    async def _serve(self) -> None:
        starter = self.loop.create_task(self._start_requests())
        try:
            await self._stopping.wait()
        finally:
            self._stopping.set()
            running = [task for job in self._active for task in job.running]
            self.fail_all(RuntimeError("the engine was closed while this call was running"))
            starter.cancel()
            if self._sweep_timer is not None:
                self._sweep_timer.cancel()
            try:  # cancelled tasks end before the session closes
                await asyncio.gather(starter, *running, return_exceptions=True)
            finally:  # even if the loop cancels this task again as it ends (asyncio.run does)
                await self.session.close()

    async def _start_requests(self) -> None:
        while True:
            job, i = await self._take()
            await self._slots.acquire()
            probing = await self._admit()
            if job.done.done():  # failed or cancelled meanwhile
                self._slots.release()
                self._end_probe(probing)
                continue
            task = self.loop.create_task(self._run(job, i, _Slot(self._slots), probing))
            job.running.add(task)
            task.add_done_callback(job.running.discard)

    async def _take(self) -> tuple[_Job, int]:
        while True:
            while self._jobs:
                i = self._jobs[0].next_index()
                if i is not None:
                    return self._jobs[0], i
                self._jobs.popleft()
            self._arrived.clear()
            await self._arrived.wait()

    async def _admit(self) -> bool:
        """Wait for a place among the first requests while none has succeeded; True if this is one of them."""
        while not self.health.succeeded and self._probes >= _SETUP_PROBES:
            self._probe_ended.clear()
            await self._probe_ended.wait()
        if self.health.succeeded:
            return False
        self._probes += 1
        return True

    def _end_probe(self, probing: bool) -> None:
        if probing:
            self._probes -= 1
            self._probe_ended.set()

    async def _run(self, job: _Job, i: int, slot: _Slot, probing: bool) -> None:
        try:
            await job.fetch(i, slot)
        except asyncio.CancelledError:
            raise
        except openai.OpenAIError as e:  # shared by every request (401/403/404, a setup error)
            self.fail_all(e)
        except Exception as e:  # noqa: BLE001 -- anything else ends this call, raised to its caller
            job.fail(e)
        else:
            job.finished_one()
        finally:
            slot.release()
            self._end_probe(probing)


class _Progress:
    """One progress bar for all the calls in flight on an engine: pairs/s, failures and backup requests so far."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bar: tqdm | None = None
        self._calls = 0
        self._counts: dict[str, int] = {}

    @contextmanager
    def call(self, n: int, show: bool) -> Iterator[_Progress]:
        """Add a call of ``n`` prompts to the bar (shown if ``show``) while it runs."""
        with self._lock:
            if show and self._bar is None:
                self._bar, self._counts = tqdm(total=0, unit="pair", desc="genrank"), {}
            if self._bar is not None:
                self._bar.total += n
                self._bar.refresh()
            self._calls += 1
        try:
            yield self
        finally:
            with self._lock:
                self._calls -= 1
                if not self._calls and self._bar is not None:
                    self._bar.close()
                    self._bar = None

    def done(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def failed(self) -> None:
        self._count("failed")

    def backup(self) -> None:
        self._count("backups")

    def _count(self, name: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._counts[name] = self._counts.get(name, 0) + 1
                self._bar.set_postfix(self._counts, refresh=False)


class _Background:
    """The event loop thread behind the blocking ``label_logprobs``: started on first use, ended by ``stop``.

    A daemon thread, so it never holds up interpreter exit; the engine's finalizer stops it at
    exit (``weakref.finalize`` runs at exit), which closes its session cleanly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def submit(self, coro: Awaitable[Any]) -> Future:
        with self._lock:
            if self.thread is None or not self.thread.is_alive():
                self._start()
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _start(self) -> None:
        ready = threading.Event()

        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            ready.set()
            await self._stop.wait()  # then asyncio.run cancels the queue's tasks, which close its session

        self.thread = threading.Thread(target=asyncio.run, args=(main(),), name="genrank-openai", daemon=True)
        self.thread.start()
        ready.wait()

    def stop(self) -> None:
        with self._lock:
            thread, loop, stop = self.thread, self._loop, self._stop
            self.thread = self._loop = self._stop = None
        if thread is None:
            return
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # its loop has already closed
            return
        if threading.current_thread() is not thread:
            thread.join(30)


def _close_all(background: _Background, queues: dict[asyncio.AbstractEventLoop, _Queue]) -> None:
    """Close an engine's queues and background thread (its finalizer: it must not hold the engine)."""
    for queue in list(queues.values()):
        queue.stop_threadsafe()
    queues.clear()
    background.stop()


class OpenAIEngine:
    """Label log-probabilities from an OpenAI-compatible server (vLLM, hosted APIs, gateways).

    ``mode="chat"`` sends the system+user messages to ``/chat/completions`` and the server applies
    the model's chat template; ``mode="completions"`` renders and tokenizes the prompt here with
    the model's ``tokenizer`` and sends the token ids to ``/completions``. On a vLLM server
    (0.32 or later) the request asks for exactly the label tokens (``logprob_token_ids``), so no
    label is ever missing; elsewhere it asks for the top ``top_logprobs`` tokens (20, or 5 where
    the server allows no more) and labels outside them get probability 0 (see ``label_mass``).

    Content is data (``content="data"``, the default): a query or document holding special-token
    text such as ``<|im_end|>`` never becomes a control token on the server. Completions mode sends
    genrank's token ids, content encoded as text. In chat mode with a ``tokenizer``, a vLLM server
    gets genrank's token ids too (on ``/completions``: rendered with the tokenizer's chat
    template, not a ``--chat-template`` the server may have been started with); other servers get
    the messages with a word joiner (U+2060) after the first character of each special-token
    string, so the server reads it as text; the model then sees a slightly changed string, and
    those pairs are reported in ``ScoredPairs.altered``. Without a tokenizer nothing is known of
    the model's special tokens: content goes as it is, and the server may read such text as
    control tokens (logged once). ``content="verbatim"`` sends chat content unchanged.

    Up to ``concurrency`` requests are in flight (and a few backups, below), shared by every
    call on the engine (a request backing off before a retry does not count); calls are
    thread-safe, and the Reranker's ``score_stream`` keeps ``max_calls_in_flight`` of them going,
    so a slow pair does not stall the chunks after it. 429, 5xx (but 501 and 505), timeouts,
    dropped connections and malformed responses are retried up to ``max_retries`` times with
    exponential backoff and jitter; a ``Retry-After`` (or a 429) pauses every request until the
    time it names. A pair that still fails, or that the server rejects, is reported in
    ``LabelLogprobs.errors`` and the rest complete. 401, 403 and 404 raise at once, and so does
    a rejection that the first 8 requests all got before any succeeded (a setup error, e.g. a
    model that takes no ``max_tokens``): both as the ``openai`` package's exception for the
    status, ending every call in flight.

    Backup requests: a request that has had no answer when the 99th percentile of the last 1,000
    answers' latencies has passed since it was sent (at least 50 ms, and not before 50 answers
    are known) is sent once more; the first good answer wins and the other request is
    cancelled, its connection closed. Scoring requests are idempotent (temperature 0,
    ``max_tokens=1``, nothing stored on the server), so a duplicate cannot change a result.
    ``backup_requests`` (default 0.05) is the budget: each request sent earns that share of a
    backup and at most 10 are saved up, so a server slow for every request gets at most 5% more
    requests, not twice as many; 0 turns backups off. Backups have places of their own beyond
    ``concurrency``, that share of it rounded up (4 for the default 64): they go even when every
    place is held by a late request, and requests in flight never exceed ``concurrency`` by more
    than that. A backup waits out a 429 pause and the rate limits like any request. A request
    and its backup are one attempt for ``max_retries``: if the request fails while its backup is
    out, the backup's answer stands in; a backup that fails is dropped; both failing is one
    failed attempt, backed off like any (a timeout too: the server is struggling). The progress
    bar counts backups.

    A template with an assistant prefix (e.g. qwen3-reranker) in chat mode sends the prefix as
    a final assistant message for the server to continue (vLLM's ``continue_final_message``);
    on other servers use ``mode="completions"``.

    ``tokenizer`` (a name, a path or a tokenizer object; in completions mode the model's by
    default) lets genrank truncate prompts to ``max_length``; without one, chat prompts go whole.
    ``requests_per_second`` and ``tokens_per_minute`` pace requests on the client (tokens are
    counted with the tokenizer, else estimated at 4 characters a token). ``show_progress``
    (default: when stderr is a terminal) shows one bar for the calls in flight, with pairs/s and
    failures so far.

    ``logprobs_mode="raw_logits"`` says that the server is a vLLM started with
    ``--logprobs-mode raw_logits``: its "logprobs" are then the label tokens' raw logits, which
    recipes scored by a raw logit need (bge-reranker-v2-gemma); the engine answers only
    ``Labels(kind="logits")`` then. genrank cannot check the server's mode: state it truly.

    ``close()`` (or ``with engine:``) ends the background thread and sessions now; ``aclose()``
    (or ``async with engine:``) also closes the running loop's session. Otherwise they end when
    the engine is garbage-collected, when their event loop ends, or at interpreter exit.
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 mode: Literal["chat", "completions"] = "chat", content: Content = "data", concurrency: int = 64,
                 max_calls_in_flight: int = 8, timeout: float = 60.0, max_retries: int = 6,
                 backup_requests: float = 0.05,
                 top_logprobs: int | None = None, label_token_ids: bool | Literal["auto"] = "auto",
                 tokenizer: Any | None = None, requests_per_second: float | None = None,
                 tokens_per_minute: float | None = None, default_headers: Mapping[str, str] | None = None,
                 default_query: Mapping[str, str | int | float] | None = None,
                 show_progress: bool | None = None, trust_remote_code: bool = False,
                 logprobs_mode: Literal["raw_logprobs", "raw_logits"] = "raw_logprobs"):
        if mode not in ("chat", "completions"):
            raise ValueError(f"mode must be 'chat' or 'completions', got {mode!r}")
        if content not in ("data", "verbatim"):
            raise ValueError(f"content must be 'data' (special-token text in a query or document is never read as "
                             f"a control token) or 'verbatim' (chat content sent unchanged), got {content!r}")
        if content == "verbatim" and mode == "completions":
            raise ValueError("content='verbatim' is for chat mode; completions mode sends genrank's token ids, "
                             "where content is always data")
        for name, value in (("concurrency", concurrency), ("max_calls_in_flight", max_calls_in_flight)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _positive(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        for name, rate in (("requests_per_second", requests_per_second), ("tokens_per_minute", tokens_per_minute)):
            if rate is not None and not _positive(rate):
                raise ValueError(f"{name} must be a positive number or None, got {rate!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if isinstance(backup_requests, bool) or not isinstance(backup_requests, numbers.Real) \
                or not 0 <= backup_requests <= 1:
            raise ValueError("backup_requests must be the share of requests that may be sent a second time when "
                             f"the first has no answer in time, from 0 (never) to 1, got {backup_requests!r}")
        if top_logprobs is not None and (not isinstance(top_logprobs, int) or not 1 <= top_logprobs <= 20):
            raise ValueError(f"top_logprobs must be an integer 1..20 or None (as many as allowed), got {top_logprobs!r}")
        if logprobs_mode not in ("raw_logprobs", "raw_logits"):
            raise ValueError("logprobs_mode must be 'raw_logprobs' (the server's default) or 'raw_logits' (a vLLM "
                             f"server started with --logprobs-mode raw_logits), got {logprobs_mode!r}")
        if label_token_ids not in ("auto", True, False):
            raise ValueError(f"label_token_ids must be 'auto', True or False, got {label_token_ids!r}")
        self.model = model
        self.mode = mode
        self.content = content
        self.prompt_format: Literal["tokens", "chat"] = "chat" if mode == "chat" else "tokens"
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
            raise ValueError("base_url holds a user name and there is an API key; give one or the other")
        headers = {"Content-Type": "application/json", **(default_headers or {})}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._backups = _Backups(self.backup_requests, concurrency) if self.backup_requests else None
        connections = concurrency + (self._backups.places if self._backups is not None else 0)
        self._new_session = partial(_session, headers, connections, self.timeout)  # holds no reference to self
        self._query = {k: str(v) for k, v in (default_query or {}).items()}
        self._proxy = _environment_proxy(self.base_url)
        self._top_logprobs = top_logprobs or _MAX_TOP_LOGPROBS
        self._top_logprobs_auto = top_logprobs is None
        self._rps = _RateLimiter(requests_per_second, 1.0) if requests_per_second is not None else None
        self._tpm = _RateLimiter(tokens_per_minute, 60.0) if tokens_per_minute is not None else None
        self._tokenizer = _load_tokenizer(tokenizer or (model if mode == "completions" else None), trust_remote_code)
        self._server: str | None = None  # "vllm" when the server can return chosen tokens' logprobs, else "other"
        self._label_ids: dict[tuple[str, ...], tuple[int, ...] | None] = {}
        self._warned_no_tokenizer = False
        self._health = _Health()
        self._lock = threading.Lock()
        self._queues: dict[asyncio.AbstractEventLoop, _Queue] = {}
        self._background = _Background()
        self._progress = _Progress()
        weakref.finalize(self, _close_all, self._background, self._queues)

    raw_logits_hint = ("If the server is a vLLM started with --logprobs-mode raw_logits, pass "
                       "logprobs_mode='raw_logits' to OpenAIEngine")

    @property
    def tokenizer(self) -> Any | None:
        return self._tokenizer

    @property
    def model_name(self) -> str:
        """The model's name, as sent to the server."""
        return self.model

    def __repr__(self) -> str:  # never shows the API key or a password in base_url
        return (f"OpenAIEngine(model={self.model!r}, base_url={_shown(URL(self.base_url))!r}, mode={self.mode!r}, "
                f"concurrency={self.concurrency})")

    # -- public API --------------------------------------------------------------------------

    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        """Blocking, thread-safe: runs on the engine's background event loop (works inside a running loop too)."""
        if threading.current_thread() is self._background.thread:
            raise RuntimeError("label_logprobs was called from the engine's own event loop; await alabel_logprobs")
        future = self._background.submit(self.alabel_logprobs(prompts, labels))
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: drop this call's requests
            raise

    async def alabel_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        """The label log-probabilities of every prompt, one request each, in input order.

        Runs on the caller's event loop; cancelling the caller drops its queued requests and
        cancels those in flight.
        """
        n = len(prompts)
        values = np.full((n, len(labels.texts)), -np.inf)
        errors: dict[int, str] = {}
        if labels.kind not in self.label_kinds:
            raise ValueError(f"OpenAIEngine(logprobs_mode={self.logprobs_mode!r}) returns label {self.label_kinds[0]}, "
                             f"not {labels.kind}" + (f". {self.raw_logits_hint}" if labels.kind == "logits" else ""))
        if not n:
            return LabelLogprobs(values, kind=labels.kind)
        queue = self._queue()
        if self._server is None:
            self._server = await self._detect_server(queue.session)
        request, ids, altered = await self._request_builder(queue.session, prompts, labels)
        if labels.kind == "logits" and ids is None:
            raise ValueError("raw label logits need a vLLM server (0.32 or later) that returns the logprobs of "
                             "chosen token ids (logprob_token_ids); this server does not")
        extract = _extractor(labels, ids, raw=labels.kind == "logits")
        show = self.show_progress if self.show_progress is not None else sys.stderr.isatty()
        with self._progress.call(n, show) as progress:

            async def fetch(i: int, slot: _Slot) -> None:
                try:
                    values[i] = await self._post_with_retries(queue, slot, partial(request, i), extract)
                except (_Transient, _Rejected) as e:
                    errors[i] = _redact(str(e), self._api_key)
                    progress.failed()
                progress.done()

            # grouped by query: a server's prefix cache reuses each query's prefix
            await queue.run(_Job(grouped_by_query(prompts), fetch))
        if errors:
            log.warning("%d of %d requests failed; first: %s", len(errors), n, errors[min(errors)])
        return LabelLogprobs(values, errors, altered, labels.kind)

    def close(self) -> None:
        """End the background thread and close the sessions (those of other event loops at their next turn)."""
        _close_all(self._background, self._queues)

    async def aclose(self) -> None:
        """``close``, awaiting the running event loop's session."""
        queue = self._queues.pop(asyncio.get_running_loop(), None)
        if queue is not None:
            await queue.aclose()
        await asyncio.to_thread(self.close)

    def __enter__(self) -> OpenAIEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> OpenAIEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _queue(self) -> _Queue:
        """The running event loop's queue, made on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            queue = self._queues.get(loop)
            if queue is None or queue.closing:
                for old in [lp for lp in self._queues if lp.is_closed()]:
                    del self._queues[old]
                queue = _Queue(self.concurrency, self._new_session, self._health, self._backups)
                self._queues[loop] = queue
        return queue

    # -- requests ----------------------------------------------------------------------------

    async def _request_builder(self, session: aiohttp.ClientSession, prompts: Prompts, labels: Labels):
        """A function from prompt index to (endpoint, JSON body, token estimate, top logprobs asked), the ids
        and the indices of prompts whose content is sent changed.

        The ids are the label token ids asked for, None where the top log-probs are read.
        """
        ids = await self._resolve_label_ids(session, labels)
        altered: set[int] = set()
        if self.mode == "chat" and not self._sends_token_ids(prompts):
            url, extra = self._url("chat/completions"), {"logprobs": True}
            neutralise = self.content == "data"
            if prompts.special_tokens is None and not self._warned_no_tokenizer:
                log.warning("no tokenizer for %r: prompts are sent whole, not truncated to max_length, and "
                            "special-token text in a query or document (e.g. '<|im_end|>') reaches the server's "
                            "chat template as it is, where it may be read as control tokens (pass tokenizer=...)",
                            self.model)
                self._warned_no_tokenizer = True
            chats = prompts.chats(neutralise=neutralise)
            if neutralise:
                altered = prompts.holding_special_tokens()
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
            field, top_field, completions = "messages", "top_logprobs", False
        else:
            if prompts.token_ids is None:
                raise ValueError("completions mode needs the model's tokenizer (tokenizer=...)")
            url, extra = self._url("completions"), {}
            payloads, field, top_field, completions = prompts.token_ids, "prompt", "logprobs", True
        if ids is not None:  # vLLM: exactly the label tokens, named by id
            extra.update(logprob_token_ids=list(ids), return_tokens_as_token_ids=True)
            if completions:
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

        return request, ids, altered

    def _sends_token_ids(self, prompts: Prompts) -> bool:
        """Chat mode on a vLLM server with the tokenizer known: genrank's token ids go to /completions."""
        return self.content == "data" and prompts.token_ids is not None and self._server == "vllm"

    async def _post_with_retries(self, queue: _Queue, slot: _Slot, request: _Request,
                                 extract: _Extract) -> list[float]:
        """One prompt's label log-probs, retrying transient failures.

        A rejection that the first ``_SETUP_PROBES`` requests all got, before any succeeded, is
        raised as the openai package's error: every other request would get it too.
        """
        try:
            try:
                values = await self._attempt(queue, request, extract)
            except _Transient as error:
                values = await self._retry(queue, slot, request, extract, error)
        except _Rejected as e:
            alike = self._health.rejected(e)
            if alike >= _SETUP_PROBES:
                raise _status_error(e.status or 200, e.where or _shown(URL(self.base_url)), e.text,
                                    f"{e} (the first {alike} requests were all rejected like this and none "
                                    "succeeded: a setup error that every request shares, so the run stops; "
                                    "check the model, the endpoint and the engine options)") from None
            raise
        self._health.succeeded = True
        return values

    async def _retry(self, queue: _Queue, slot: _Slot, request: _Request, extract: _Extract,
                     error: _Transient) -> list[float]:
        """The retries after a first attempt that failed with ``error``, by tenacity's rules.

        The first attempt goes out without tenacity (its machinery costs more client CPU than a
        request, and most requests need no retry); tenacity counts it, and waits after it, as
        after any failed attempt.
        """
        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), wait=_wait, sleep=slot.sleep,
                                 retry=retry_if_exception_type(_Transient), reraise=True)
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    if attempts == 1:
                        raise error
                    return await self._attempt(queue, request, extract)
        except _Transient as e:
            raise _Transient(f"{e} (gave up after {attempts} attempts)") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, queue: _Queue, request: _Request, extract: _Extract) -> list[float]:
        """One attempt at a request: sent, and sent again (a backup) if it is late.

        The backup goes ``_Backups.delay`` seconds after the request was sent, if the budget
        allows. The first good answer wins and the other request is cancelled (its connection
        closed, its place freed). If the request fails while its backup is out, the backup's
        answer stands in for it; a backup that fails is dropped. Both failing is one failed
        attempt, with the request's error.
        """
        backups = self._backups
        if backups is None:
            return await self._post(queue, request, extract)
        backups.sent()
        hedge = _Hedge(self, queue, request, extract)
        try:
            try:
                return await self._post(queue, request, extract, hedge)
            finally:
                hedge.racing = False
        except asyncio.CancelledError:
            if hedge.took_over():
                return hedge.backup.result()
            raise
        except _Transient as error:
            if hedge.backup is None:
                raise
            try:
                return await hedge.backup
            except (_Transient, _Rejected, openai.OpenAIError):
                raise error from None
        finally:
            backup = hedge.stop()
            if backup is not None:  # ended before this attempt ends: connection closed, place freed
                backup.cancel()
                await asyncio.wait((backup,))

    def _send_backup(self, queue: _Queue, request: _Request, extract: _Extract) -> asyncio.Task | None:
        """A late request's backup, in a task of its own; None when the budget is spent."""
        if not self._backups.take():
            return None
        self._progress.backup()
        return queue.loop.create_task(self._backup(queue, request, extract))

    async def _backup(self, queue: _Queue, request: _Request, extract: _Extract) -> list[float]:
        async with queue.backup_slots:
            return await self._post(queue, request, extract)

    async def _post(self, queue: _Queue, request: _Request, extract: _Extract,
                    hedge: _Hedge | None = None) -> list[float]:
        """One request's label log-probs; the queue watches ``hedge`` from when the request goes.

        A good answer's latency (from sending to its body) goes to the backup delay.
        """
        url, body, tokens, top = request()
        await queue.wait_if_paused()
        if self._rps is not None:
            await self._rps.acquire()
        if self._tpm is not None:
            await self._tpm.acquire(tokens)
        if hedge is not None:
            queue.watch(hedge)
        sent = queue.loop.time()
        try:
            async with queue.session.post(url, data=body, proxy=self._proxy) as resp:
                raw = await resp.read()
                answered = queue.loop.time()
                status = resp.status
                retry_after = _retry_after(resp.headers) if status in _RETRY_STATUS else None
        except (asyncio.TimeoutError, TimeoutError):
            raise _Transient(f"no response within timeout={self.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise _Transient(f"connection failed: {type(e).__name__}: {e}") from None
        if status == 200:
            try:
                data = json.loads(raw)
            except ValueError:
                text = _redact(raw.decode("utf-8", "replace"), self._api_key)
                raise _Transient(f"malformed JSON in response: {text[:80]!r}") from None
            values = extract(data)
            if self._backups is not None:
                self._backups.answered(answered - sent)
            return values
        if retry_after is not None or status == 429:  # the server is busy for every request, not just this one
            queue.pause(retry_after if retry_after is not None else _BARE_429_PAUSE)
        error = self._http_error(status, url, raw, retry_after)
        if status == 400 and self._top_logprobs_auto and (top or 0) > _FALLBACK_TOP_LOGPROBS \
                and "logprobs" in _server_message(raw.decode("utf-8", "replace")).lower():
            if self._top_logprobs > _FALLBACK_TOP_LOGPROBS:
                log.warning("server refused top_logprobs=%d (%s); asking for %d", top, error, _FALLBACK_TOP_LOGPROBS)
                self._top_logprobs = _FALLBACK_TOP_LOGPROBS
            return await self._post(queue, request, extract, hedge)  # at once, not counted as a retry: nothing failed
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
        return _Transient(reason, retry_after) if status in _RETRY_STATUS else _Rejected(reason, status, text, where)

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


def _extractor(labels: Labels, ids: tuple[int, ...] | None, raw: bool = False) -> _Extract:
    """A function from a response to the (K,) label log-probs.

    Tokens are matched to labels by id when the server returns ``token_id:N`` forms, else by text
    after stripping whitespace ("7", " 7" and "7\\n" are one label, their probabilities summed);
    other tokens are ignored. A response without log-probs for the first token is rejected (the
    server ignores ``logprobs``; asking again returns the same), a malformed one is transient.
    ``raw``: the values are raw logits (``--logprobs-mode raw_logits``), matched by id and taken as
    they are; a label without one is -inf (the scorer reports that pair).
    """
    if raw:
        return _raw_extractor(labels, ids or ())

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


def _raw_extractor(labels: Labels, ids: tuple[int, ...]) -> _Extract:
    """Raw label logits from a vLLM server run with ``--logprobs-mode raw_logits``, by token id."""
    where = {f"{_TOKEN_ID_PREFIX}{t}": k for k, t in enumerate(ids)}

    def extract(data: dict) -> list[float]:
        out = [-math.inf] * len(labels.texts)
        try:
            logprobs = data["choices"][0].get("logprobs") or {}
            chat = "content" in logprobs
            first = logprobs.get("content" if chat else "top_logprobs")
            if not first:
                raise _Rejected("the server returned no logprobs for the first token (does it support logprobs?)")
            top = ((e["token"], e["logprob"]) for e in first[0]["top_logprobs"]) if chat else first[0].items()
            for token, value in top:
                k = where.get(token.strip())
                if k is not None:
                    out[k] = float(value)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise _Transient("response has no usable first-token logprobs") from None
        return out

    return extract


def _wait(state) -> float:
    """The server's Retry-After when it sent one, else exponential backoff with jitter."""
    exc = state.outcome.exception() if state.outcome is not None else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, _MAX_WAIT)
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


def _status_error(status: int, url: str, text: str, reason: str) -> openai.APIError:
    """The openai package's exception for ``status`` (it wants the HTTP library's request/response objects).

    200 (an answer without what was asked for) gives ``APIResponseValidationError``.
    """
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
    if status == 200:
        return openai.APIResponseValidationError(response, body, message=reason)
    cls = _STATUS_ERRORS.get(status) or (openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(reason, response=response, body=body)


def _session(headers: Mapping[str, str], connections: int, timeout: float) -> aiohttp.ClientSession:
    """A session for the running event loop: at most ``connections`` connections, ``timeout`` seconds a request."""
    return aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=connections, ttl_dns_cache=300),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


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

        from .loading import pretrained
    except ImportError:
        raise ImportError("loading a tokenizer by name needs transformers: pip install transformers") from None
    try:
        return pretrained(AutoTokenizer.from_pretrained, tokenizer, filename="tokenizer_config.json",
                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer {tokenizer!r} (completions mode and prompt truncation need "
                         f"the model's tokenizer; pass tokenizer=NAME_OR_PATH or a tokenizer object): {e}") from None

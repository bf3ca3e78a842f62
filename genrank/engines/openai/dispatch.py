"""The engine's requests on every event loop: one limit on those in flight, one pause, one health; retries.

Requests go out through one ``aiohttp`` session per event loop (a bare client costs a fraction of
the CPU per request of the ``openai`` SDK's, and client CPU decides throughput at scale); the
limits are the engine's, whichever loops and threads its calls come from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from functools import partial

import aiohttp
import openai
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from yarl import URL

from .backups import Backups, Hedge
from .errors import RETRY_STATUS, Rejected, Transient, http_error, redact, retry_after, retry_wait, shown, \
    status_error
from .limits import Limiter, Pause, RateLimiter
from .progress import Progress
from .protocol import FALLBACK_TOP_LOGPROBS, MAX_TOP_LOGPROBS, Extract, refuses_top_logprobs
from .queue import Queue, Slot

log = logging.getLogger(__name__)

RequestParts = tuple[URL, bytes, int, int | None]  # endpoint, JSON body, token estimate, top logprobs asked
Request = Callable[[], RequestParts]  # built at each post: the top logprobs asked may have stepped down

# Until a request succeeds, at most this many are in flight, and this many rejected alike stop the
# run: a handful of pairs that fail on their own (too long, say) rarely come first and all alike,
# and a misconfigured run (a model that takes no max_tokens) costs this many requests, not millions.
SETUP_PROBES = 8
_BARE_429_PAUSE = 0.5  # seconds every request waits after a 429 that names no time (the first backoff step)


class Health:
    """Whether any request has succeeded yet; until one has, the first requests in flight and the rejections alike.

    Until a request succeeds at most ``SETUP_PROBES`` are in flight; once that many were rejected
    alike (a setup error), one at a time, so each later call stops at its first rejection.
    """

    def __init__(self) -> None:
        self.succeeded = False
        self._probes = Limiter(SETUP_PROBES)
        self._lock = threading.Lock()
        self._last: tuple[int | None, str] | None = None
        self._alike = 0

    async def admit(self) -> bool:
        """Wait for a place among the first requests while none has succeeded; True if this is one of them."""
        if self.succeeded:
            return False
        await self._probes.acquire()
        return True

    def end_probe(self) -> None:
        self._probes.release()

    def success(self) -> None:
        if not self.succeeded:
            self.succeeded = True
            self._probes.resize(math.inf)

    def rejected(self, e: Rejected) -> int:
        """Record a rejection; the number of rejections like it in a row before any success (0 after one)."""
        if self.succeeded:
            return 0
        with self._lock:
            key = (e.status, str(e))
            self._alike = self._alike + 1 if key == self._last else 1
            self._last = key
            alike = self._alike
        if alike == SETUP_PROBES:
            self._probes.resize(1)
        return alike


class Dispatcher:
    """One engine's requests, from every event loop and thread: limits, pause, health, retries and backups.

    ``places`` bounds the requests in flight (a request backing off before a retry holds none);
    a 429 or ``Retry-After`` pauses every request (``pause``); until a request has succeeded at
    most ``SETUP_PROBES`` are in flight, and that many rejected alike end every call (``health``,
    ``fail_all``). Each event loop has its ``Queue`` (session and call order), made on first use.
    ``close`` is final: a closed dispatcher hands out no queue.
    """

    def __init__(self, *, base_url: str, api_key: str | None, headers: Mapping[str, str], proxy: str | None,
                 concurrency: int, timeout: float, max_retries: int, backups: Backups | None,
                 requests_per_second: float | None, tokens_per_minute: float | None, top_logprobs: int | None,
                 progress: Progress):
        self.places = Limiter(concurrency)
        self.backups = backups
        self.pause = Pause()
        self.health = Health()
        self.top_logprobs = top_logprobs or MAX_TOP_LOGPROBS  # read at each post: a server may refuse 20
        self.top_logprobs_auto = top_logprobs is None  # then 5 where the server refuses 20
        self.closed = False
        connections = concurrency + (backups.extra if backups is not None else 0)
        self.new_session = partial(_session, headers, connections, timeout)
        self._where = shown(URL(base_url))
        self.proxy = proxy  # from the environment, looked up once
        self._api_key, self._timeout, self._max_retries = api_key, timeout, max_retries
        self._rps = RateLimiter(requests_per_second, 1.0) if requests_per_second is not None else None
        self._tpm = RateLimiter(tokens_per_minute, 60.0) if tokens_per_minute is not None else None
        self._progress = progress
        self._lock = threading.Lock()
        self._queues: dict[asyncio.AbstractEventLoop, Queue] = {}

    def queue(self) -> Queue:
        """The running event loop's queue, made on first use; RuntimeError once closed."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.closed:
                raise RuntimeError("the engine is closed")
            queue = self._queues.get(loop)
            if queue is None or queue.closing:
                for old in [lp for lp in self._queues if lp.is_closed()]:
                    del self._queues[old]
                queue = self._queues[loop] = Queue(self)
        return queue

    def fail_all(self, error: BaseException) -> None:
        """End every call on every event loop with ``error`` (one that every request shares)."""
        with self._lock:
            queues = list(self._queues.values())
        here = asyncio._get_running_loop()
        for queue in queues:
            if queue.loop is here:
                queue.fail_all(error)
            else:
                try:
                    queue.loop.call_soon_threadsafe(queue.fail_all, error)
                except RuntimeError:  # its loop has closed
                    pass

    def close(self) -> None:
        """Close for good; each queue closes its session at its loop's next turn. Safe from any thread, twice."""
        with self._lock:
            self.closed = True
            queues = list(self._queues.values())
            self._queues.clear()
        for queue in queues:
            queue.stop_threadsafe()

    async def aclose(self) -> None:
        """``close``, awaiting the running event loop's queue."""
        with self._lock:
            mine = self._queues.pop(asyncio.get_running_loop(), None)
        self.close()
        if mine is not None:
            await mine.aclose()

    # -- one prompt's request ------------------------------------------------------------------

    async def fetch(self, queue: Queue, slot: Slot, request: Request, extract: Extract) -> list[float]:
        """One prompt's label log-probs, retrying transient failures.

        A rejection that the first ``SETUP_PROBES`` requests all got, before any succeeded, is
        raised as the openai package's error: every other request would get it too.
        """
        try:
            try:
                values = await self._attempt(queue, request, extract)
            except Transient as error:
                values = await self._retry(queue, slot, request, extract, error)
        except Rejected as e:
            alike = self.health.rejected(e)
            if alike >= SETUP_PROBES:
                raise status_error(e.status or 200, e.where or self._where, e.text,
                                   f"{e} (the first {alike} requests were all rejected like this and none "
                                   "succeeded: a setup error that every request shares, so the run stops; "
                                   "check the model, the endpoint and the engine options)") from None
            raise
        self.health.success()
        return values

    async def _retry(self, queue: Queue, slot: Slot, request: Request, extract: Extract,
                     error: Transient) -> list[float]:
        """The retries after a first attempt that failed with ``error``, by tenacity's rules.

        The first attempt goes out without tenacity (its machinery costs more client CPU than a
        request, and most requests need no retry); tenacity counts it, and waits after it, as
        after any failed attempt.
        """
        retrying = AsyncRetrying(stop=stop_after_attempt(self._max_retries + 1), wait=retry_wait, sleep=slot.sleep,
                                 retry=retry_if_exception_type(Transient), reraise=True)
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    if attempts == 1:
                        raise error
                    return await self._attempt(queue, request, extract)
        except Transient as e:
            raise Transient(f"{e} (gave up after {attempts} attempts)") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, queue: Queue, request: Request, extract: Extract) -> list[float]:
        """One attempt at a request: sent, and sent again (a backup) if it is late.

        The backup goes ``Backups.delay`` seconds after the request was sent, if the budget
        allows. The first good answer wins and the other request is cancelled (its connection
        closed, its place freed). If the request fails while its backup is out, the backup's
        answer stands in for it; a backup that fails is dropped. Both failing is one failed
        attempt, with the request's error.
        """
        backups = self.backups
        if backups is None:
            return await self._post(queue, request, extract)
        backups.sent()
        hedge = Hedge(self, queue, request, extract)
        try:
            try:
                return await self._post(queue, request, extract, hedge)
            finally:
                hedge.racing = False
        except asyncio.CancelledError:
            if hedge.took_over():
                return hedge.backup.result()
            raise
        except Transient as error:
            if hedge.backup is None:
                raise
            try:
                return await hedge.backup
            except (Transient, Rejected, openai.OpenAIError):
                raise error from None
        finally:
            backup = hedge.stop()
            if backup is not None:  # ended before this attempt ends: connection closed, place freed
                backup.cancel()
                await asyncio.wait((backup,))

    def send_backup(self, queue: Queue, request: Request, extract: Extract) -> asyncio.Task | None:
        """A late request's backup, in a task of its own; None when the budget is spent."""
        if not self.backups.take():
            return None
        self._progress.backup()
        return queue.loop.create_task(self._backup(queue, request, extract))

    async def _backup(self, queue: Queue, request: Request, extract: Extract) -> list[float]:
        async with self.backups.places:
            return await self._post(queue, request, extract)

    async def _post(self, queue: Queue, request: Request, extract: Extract,
                    hedge: Hedge | None = None) -> list[float]:
        """One request's label log-probs; the queue's watch has ``hedge`` from when the request goes.

        A good answer's latency (from sending to its body) goes to the backup delay. A refusal
        of the top log-probs asked is sent again at once, asking for fewer: not a retry (nothing
        failed), nor a new request for the rate limits or the watch.
        """
        url, body, tokens, top = request()
        await self.pause.wait()
        if self._rps is not None:
            await self._rps.acquire()
        if self._tpm is not None:
            await self._tpm.acquire(tokens)
        if hedge is not None:
            queue.watch.add(hedge)
        while True:
            sent = queue.loop.time()
            try:
                async with queue.session.post(url, data=body, proxy=self.proxy) as resp:
                    raw = await resp.read()
                    answered = queue.loop.time()
                    status = resp.status
                    wait = retry_after(resp.headers) if status in RETRY_STATUS else None
            except (asyncio.TimeoutError, TimeoutError):
                raise Transient(f"no response within timeout={self._timeout:g}s") from None
            except aiohttp.ClientError as e:
                raise Transient(f"connection failed: {type(e).__name__}: {e}") from None
            if status == 200:
                try:
                    data = json.loads(raw)
                except ValueError:
                    text = redact(raw.decode("utf-8", "replace"), self._api_key)
                    raise Transient(f"malformed JSON in response: {text[:80]!r}") from None
                values = extract(data)
                if self.backups is not None:
                    self.backups.answered(answered - sent)
                return values
            if wait is not None or status == 429:  # the server is busy for every request, not just this one
                self.pause.pause(wait if wait is not None else _BARE_429_PAUSE)
            error = http_error(status, url, raw, self._api_key, wait)
            if not (self.top_logprobs_auto and (top or 0) > FALLBACK_TOP_LOGPROBS
                    and refuses_top_logprobs(status, raw.decode("utf-8", "replace"))):
                raise error
            if self.top_logprobs > FALLBACK_TOP_LOGPROBS:
                log.warning("server refused top_logprobs=%d (%s); asking for %d", top, error, FALLBACK_TOP_LOGPROBS)
                self.top_logprobs = FALLBACK_TOP_LOGPROBS
            url, body, tokens, top = request()


def _session(headers: Mapping[str, str], connections: int, timeout: float) -> aiohttp.ClientSession:
    """A session for the running event loop: at most ``connections`` connections, ``timeout`` seconds a request."""
    return aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=connections, ttl_dns_cache=300),
                                 timeout=aiohttp.ClientTimeout(total=timeout))

"""Limits that hold across every event loop and thread using an engine: places in flight, pace, pauses."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

from .errors import MAX_WAIT

_running_loop = asyncio._get_running_loop  # the running loop or None, without raising


class Limiter:
    """At most ``total`` holders at once, among tasks on any event loops and threads; first come, first served.

    asyncio's ``Semaphore`` (and anyio's ``CapacityLimiter``) belongs to one event loop. This one
    keeps its count under a thread lock and wakes a waiter on the waiter's own loop
    (``call_soon_threadsafe`` from another thread). A place given to a waiter whose loop has
    closed goes to the next waiter.
    """

    def __init__(self, total: float):
        self._lock = threading.Lock()
        self._total = self._free = total
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        with self._lock:
            if self._free >= 1 and not self._waiters:
                self._free -= 1
                return
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:  # cancelled
            with self._lock:
                try:
                    self._waiters.remove(waiter)
                    given = False
                except ValueError:
                    given = True
            if given:  # the place came as it was cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        while True:
            with self._lock:
                if not self._waiters:
                    self._free += 1
                    return
                waiter = self._waiters.popleft()
            if waiter.get_loop() is _running_loop():  # the common case, inlined: this runs for every request
                if not waiter.done():
                    waiter.set_result(None)
                return
            if _wake(waiter):
                return

    def resize(self, total: float) -> None:
        """Allow ``total`` holders from now on (``math.inf``: no limit); waiters go as places free up."""
        with self._lock:
            self._free += total - self._total
            self._total = total
            woken = []
            while self._free >= 1 and self._waiters:
                self._free -= 1
                woken.append(self._waiters.popleft())
        for waiter in woken:
            if not _wake(waiter):
                self.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _wake(waiter: asyncio.Future[None]) -> bool:
    """Resolve ``waiter`` on its loop; False if that loop has closed."""
    loop = waiter.get_loop()
    if loop is _running_loop():
        _resolve(waiter)
        return True
    try:
        loop.call_soon_threadsafe(_resolve, waiter)
    except RuntimeError:  # closed: its tasks are gone
        return False
    return True


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # else cancelled: its task passes the place on
        waiter.set_result(None)


class RateLimiter:
    """Spaces requests so at most ``rate`` units start per ``period`` seconds, with no burst.

    A reservation schedule (each acquisition books the next free slot) rather than a bucket such
    as aiolimiter's ``AsyncLimiter``, which lets a whole period's budget go at once (a minute of
    tokens in one burst, what hosted APIs answer with 429s), belongs to one event loop and refuses
    a request larger than the budget. This holds only a timestamp, so one pace holds across the
    engine's event loops; a request larger than ``rate`` books a whole period.
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


class Pause:
    """No request goes out before the time a server named (a 429 or ``Retry-After``), on any event loop."""

    def __init__(self) -> None:
        self.until = 0.0  # time.monotonic()
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        """No request is sent for ``seconds`` from now (at most ``MAX_WAIT``)."""
        with self._lock:
            self.until = max(self.until, time.monotonic() + min(seconds, MAX_WAIT))

    async def wait(self) -> None:
        while (delay := self.until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

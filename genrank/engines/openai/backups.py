"""Backup requests against tail latency: when a request is late, the budget for its backup, and the race.

A request with no answer after the 99th percentile of recent latencies is sent once more (as in
Finagle's ``BackupRequestFilter``, gRPC hedging and "The Tail at Scale"); the first answer wins.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from .limits import Limiter

if TYPE_CHECKING:
    from .dispatch import Dispatcher, Request
    from .protocol import Extract
    from .queue import Queue

# Backups are sent after the 99th percentile of the last _LATENCY_WINDOW answers' latencies
# (once MIN_LATENCIES are known; recomputed every _LATENCY_WINDOW // 5 answers), never sooner
# than _MIN_DELAY; each request sent earns `share` of a backup, at most _BURST saved up (a
# token bucket, like gRPC's retry throttling and Finagle's RetryBudget).
_PERCENTILE = 0.99
_LATENCY_WINDOW = 1000
MIN_LATENCIES = 50
_MIN_DELAY = 0.05  # seconds
_BURST = 10.0
_TICK = 0.005  # seconds: late requests are looked for this often at most


class Backups:
    """When to send a backup of a request, from the latencies of recent answers, and the budget and places for them.

    One for the engine, shared by its event loops (a server's latencies are the same for all).
    """

    def __init__(self, share: float, concurrency: int):
        self.share = share
        self.extra = math.ceil(concurrency * share)  # backups in flight at most, beyond ``concurrency``
        self.places = Limiter(self.extra)
        self.delay: float | None = None  # seconds after sending; None until enough answers are known
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._unseen = 0  # latencies added since the delay was computed
        self._tokens = 0.0
        self._lock = threading.Lock()

    def sent(self) -> None:
        """A request (not a backup) went out: it earns ``share`` of a backup."""
        with self._lock:
            self._tokens = min(self._tokens + self.share, _BURST)

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
            if len(self._latencies) >= MIN_LATENCIES and (self.delay is None
                                                          or self._unseen >= _LATENCY_WINDOW // 5):
                ordered = sorted(self._latencies)
                self.delay = max(ordered[int(_PERCENTILE * (len(ordered) - 1))], _MIN_DELAY)
                self._unseen = 0


class Hedge:
    """A request that may get a backup, and the race between them (see ``Dispatcher.attempt``).

    The request runs in the task that made this (the owner). Its queue's ``Watch`` calls ``late``
    if the request has had no answer for the backup delay; the dispatcher then sends the backup
    in a task of its own (unless the budget is spent), and a backup that answers while the owner
    still waits cancels the owner's request, whose ``CancelledError`` ``took_over`` tells from a
    cancel from outside. The request's parts are held as they are, not in a partial: this is
    made for every request, and what lives as long as a request costs garbage-collector time.
    """

    __slots__ = ("_dispatcher", "_extract", "_owner", "_queue", "_request", "backup", "racing", "since", "won")

    def __init__(self, dispatcher: Dispatcher, queue: Queue, request: Request, extract: Extract):
        self._dispatcher, self._queue, self._request, self._extract = dispatcher, queue, request, extract
        self._owner: Any = asyncio.current_task()
        self.since = math.inf  # loop time the request went out (or the budget last refused its backup)
        self.backup: asyncio.Task | None = None
        self.racing = True  # the owner waits for its request
        self.won = False  # the backup answered first and cancelled the request

    def late(self) -> bool:
        """Send the backup of a request still out; False when the budget refused it (ask again later)."""
        if self.racing and self.backup is None:
            self.backup = self._dispatcher.send_backup(self._queue, self._request, self._extract)
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
        """End the race and let go of the request (the watch may hold this a while yet); the backup if still out."""
        self.racing = False
        self._dispatcher = self._queue = self._request = self._extract = self._owner = None
        return self.backup if self.backup is not None and not self.backup.done() else None

    def _answered(self, backup: asyncio.Task) -> None:
        if not backup.cancelled() and backup.exception() is None and self.racing:  # a failure is dropped
            self.won = True
            self._owner.cancel()


class Watch:
    """One event loop's requests that may get a backup, in sending order, and the timer that finds the late ones.

    A request sent before the delay is known is late once it is known and has passed. A late
    request whose backup the budget refused is looked at again after another delay: by then the
    budget has grown, and requests that were only held up by a stall (of the server, or of this
    event loop: a garbage collection) have their answers, so the budget goes to the requests that
    are really stuck. One timer serves all the requests, every ``_TICK`` seconds at most (one per
    request would cost more CPU than the rest of the watch), and none while none is out.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, backups: Backups):
        self._loop, self._backups = loop, backups
        self._watched: deque[Hedge] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, hedge: Hedge) -> None:
        """``hedge``'s request goes out now: call ``hedge.late()`` if it has no answer after the backup delay."""
        hedge.since = self._loop.time()
        self._watched.append(hedge)
        if self._timer is None:
            self._timer = self._loop.call_at(hedge.since + (self._backups.delay or _MIN_DELAY), self._sweep)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _sweep(self) -> None:
        now, delay, watched = self._loop.time(), self._backups.delay, self._watched
        while watched and not watched[0].racing:  # answered
            watched.popleft()
        if delay is not None:
            while watched and watched[0].since + delay <= now:
                hedge = watched.popleft()
                if not hedge.late():
                    hedge.since = now
                    watched.append(hedge)
        self._timer = None
        if watched:  # next when the oldest is due, or (the delay not yet known) in a while
            due = watched[0].since + delay if delay is not None else now + _MIN_DELAY
            self._timer = self._loop.call_at(max(due, now + _TICK), self._sweep)

"""The event loop thread behind an engine's blocking calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Background:
    """An event loop on a daemon thread: started on first use, ended for good by ``stop``.

    A daemon thread never holds up interpreter exit; the engine's finalizer stops it at exit
    (``weakref.finalize`` runs then), which closes its session cleanly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopped = False

    def submit(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Future[T]:
        """Run ``function(*args)`` on the loop; RuntimeError once stopped."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the engine is closed")
            if self.thread is None or not self.thread.is_alive():
                self._start()
            return asyncio.run_coroutine_threadsafe(function(*args), self._loop)

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
        """End the loop (its tasks cancelled) and wait for the thread, unless called from it. Final; safe twice."""
        with self._lock:
            self._stopped = True
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

"""One event loop's part of an engine: its session, and its calls' requests started in order of arrival."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import openai

from .backups import Watch
from .limits import Limiter

if TYPE_CHECKING:
    from .dispatch import Dispatcher, Health


class Job:
    """One call's requests on a queue: the prompt indices still to send, those in flight, and the outcome."""

    def __init__(self, order: list[int], fetch: Callable[[int, Slot], Awaitable[None]]):
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


class Slot:
    """One request's place among the engine's ``concurrency``: held while it is sent, let go while it backs off.

    Its task's end gives the place back, and the setup probe it may hold (even a task cancelled
    before it started: the limits are the engine's, so nothing may leak from them).
    """

    __slots__ = ("_health", "_held", "_job", "_places", "_probing")

    def __init__(self, places: Limiter, health: Health, probing: bool, job: Job):
        self._places, self._health, self._probing, self._job = places, health, probing, job
        self._held = True  # acquired for it by the queue

    async def sleep(self, seconds: float) -> None:
        """Back off without holding a place, then take one again (tenacity's ``sleep``)."""
        self.release()
        await asyncio.sleep(seconds)
        await self._places.acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._places.release()

    def finished(self, task: asyncio.Task) -> None:
        """The task's done callback."""
        self._job.running.discard(task)
        self.release()
        if self._probing:
            self._probing = False
            self._health.end_probe()


class Queue:
    """One event loop's session and request queue, kept for the loop's life (or the engine's).

    Calls' requests are started first come, first served, each when it gets one of the engine's
    places (``Dispatcher.places``, shared with the other loops) and, until a request has
    succeeded, a setup probe. The queue ends, and its session closes, on ``aclose``, on
    ``stop_threadsafe`` or when the loop cancels its tasks at its end (``asyncio.run`` does).
    """

    def __init__(self, dispatcher: Dispatcher):
        self.loop = asyncio.get_running_loop()
        self.session = dispatcher.new_session()
        self.watch = Watch(self.loop, dispatcher.backups) if dispatcher.backups is not None else None
        self._dispatcher = dispatcher
        self._jobs: deque[Job] = deque()  # calls with requests still to start, oldest first
        self._active: set[Job] = set()  # calls not yet returned
        self._arrived = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task = self.loop.create_task(self._serve())

    @property
    def closing(self) -> bool:
        return self._stopping.is_set() or self._task.done()

    async def run(self, job: Job) -> None:
        """Send ``job``'s requests and wait for them; cancelling the caller cancels them."""
        if self.closing:
            raise RuntimeError("the engine is closed")
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
        """End every call on this queue with ``error`` (call on the queue's loop)."""
        for job in list(self._active):
            job.fail(error)

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
            if self.watch is not None:
                self.watch.cancel()
            try:  # cancelled tasks end before the session closes
                await asyncio.gather(starter, *running, return_exceptions=True)
            finally:  # even if the loop cancels this task again as it ends (asyncio.run does)
                await self.session.close()

    async def _start_requests(self) -> None:
        places, health = self._dispatcher.places, self._dispatcher.health
        while True:
            job, i = await self._take()
            await places.acquire()
            try:
                probing = await health.admit()
            except BaseException:
                places.release()
                raise
            if job.done.done():  # failed or cancelled meanwhile
                places.release()
                if probing:
                    health.end_probe()
                continue
            task = self.loop.create_task(self._run(job, i, slot := Slot(places, health, probing, job)))
            job.running.add(task)
            task.add_done_callback(slot.finished)

    async def _take(self) -> tuple[Job, int]:
        while True:
            while self._jobs:
                i = self._jobs[0].next_index()
                if i is not None:
                    return self._jobs[0], i
                self._jobs.popleft()
            self._arrived.clear()
            await self._arrived.wait()

    async def _run(self, job: Job, i: int, slot: Slot) -> None:
        try:
            await job.fetch(i, slot)
        except asyncio.CancelledError:
            raise
        except openai.OpenAIError as e:  # shared by every request (401/403/404, a setup error)
            self._dispatcher.fail_all(e)
        except Exception as e:  # noqa: BLE001 -- anything else ends this call, raised to its caller
            job.fail(e)
        else:
            job.finished_one()

"""Scoring for concurrent requests: their prompts batched into shared engine calls, within a queue limit."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ..prompts import Prompts
from ..reranker import Reranker, ScoredPairs, concat_scored
from .metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The server already holds as many pairs as it takes; the client should retry later."""


@dataclass(eq=False)
class _Job:
    prompts: Prompts
    future: asyncio.Future[ScoredPairs]
    request: object  # the same for the jobs of one request


class Scheduler:
    """Scores the prompts of concurrent requests, each request's result routed back to it.

    An in-process engine gets the prompts of all waiting requests in one call, up to
    ``max_batch_pairs`` prompts (a request larger than that goes alone, whole): a request waits
    at most ``max_wait`` seconds for others to join it, and none while the engine is busy, since
    the next call starts with everything queued meanwhile. ``max_batch_pairs=0`` gives each
    request a call of its own. Calls go through ``Reranker.alabel_logprobs`` (the Reranker's
    engine thread), ``max_calls_in_flight`` of them at once (one by default).

    A ``native_async`` engine (a remote server) takes each request as it comes
    and spreads its prompts over its own concurrent connections.

    A request comes in parts (bounded pieces of its pairs), each a job of its own, so a
    cancelled request (its client went away, it timed out) has the parts not yet in an engine
    call dropped; a call in progress finishes. ``admit`` bounds the pairs admitted and not yet
    answered.
    """

    def __init__(self, reranker: Reranker, metrics: Metrics, *, max_batch_pairs: int = 256, max_wait: float = 0.005,
                 max_pending_pairs: int = 10_000):
        self.reranker = reranker
        self.metrics = metrics
        self.max_batch_pairs = max_batch_pairs
        self.max_wait = max_wait
        self.max_pending_pairs = max_pending_pairs
        self.native = reranker.engine.native_async
        self.pending_pairs = 0
        self._waiting: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._calls = reranker.engine.max_calls_in_flight
        metrics.watch_queue(self.queued_prompts, lambda: self.pending_pairs)

    def queued_prompts(self) -> int:
        """Prompts waiting for an engine call."""
        return sum(len(job.prompts) for job in self._waiting if not job.future.done())

    @contextmanager
    def admit(self, pairs: int) -> Iterator[None]:
        """Hold ``pairs`` against the limit while the block runs; QueueFull if they do not fit.

        A request is always admitted when nothing else is pending, however large.
        """
        if pairs and self.pending_pairs and self.pending_pairs + pairs > self.max_pending_pairs:
            raise QueueFull(f"the server holds {self.pending_pairs} pairs and takes at most "
                            f"{self.max_pending_pairs} (--max-queue-pairs); retry later")
        self.pending_pairs += pairs
        try:
            yield
        finally:
            self.pending_pairs -= pairs

    def start(self) -> None:
        """Start the batching workers on the running event loop."""
        if not self.native:
            self._workers = [asyncio.create_task(self._work(), name=f"genrank-batcher-{n}")
                             for n in range(self._calls)]

    async def stop(self) -> None:
        """Stop the workers; requests still waiting (none after a graceful shutdown) fail."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while self._waiting:
            job = self._waiting.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    async def score(self, parts: Sequence[Prompts]) -> ScoredPairs:
        """The scores of one request's prompts, built in ``parts`` (whole pairs each), in order;
        cancelling the caller drops the parts not yet sent to the engine."""
        if self.native:
            prompts = Prompts.concat(parts)
            self.metrics.batch_prompts.observe(len(prompts))
            self.metrics.batch_requests.observe(1)
            with self.metrics.engine_seconds.time():
                return await self.reranker.ascore_prompts(prompts)
        if not self.max_batch_pairs and len(parts) > 1:  # each request its own call
            parts = [Prompts.concat(parts)]
        loop, request = asyncio.get_running_loop(), object()
        jobs = [_Job(part, loop.create_future(), request) for part in parts]
        self._waiting.extend(jobs)
        self._arrived.set()
        try:
            return concat_scored([await job.future for job in jobs])
        finally:
            for job in jobs:
                job.future.cancel()  # no-op once answered

    # -- workers -----------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._run(await self._next_batch())

    async def _next_batch(self) -> list[_Job]:
        """The first waiting job and those behind it that fit the budget, waiting up to max_wait for them."""
        batch = [await self._first()]
        size = len(batch[0].prompts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while size < self.max_batch_pairs:
            while self._waiting and size < self.max_batch_pairs:
                job = self._waiting[0]
                if job.future.done():  # cancelled while waiting
                    self._waiting.popleft()
                    continue
                if size + len(job.prompts) > self.max_batch_pairs:
                    return batch  # first come, first served: no job jumps the queue
                batch.append(self._waiting.popleft())
                size += len(job.prompts)
            left = deadline - loop.time()
            if size >= self.max_batch_pairs or left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:  # TimeoutError from 3.11 on
                break
        return batch

    async def _first(self) -> _Job:
        while True:
            while self._waiting:
                job = self._waiting.popleft()
                if not job.future.done():
                    return job
            self._arrived.clear()
            await self._arrived.wait()

    async def _run(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if not job.future.done()]
        if not batch:
            return
        self.metrics.batch_prompts.observe(sum(len(job.prompts) for job in batch))
        self.metrics.batch_requests.observe(len({job.request for job in batch}))
        parts = [job.prompts for job in batch]
        try:
            with self.metrics.engine_seconds.time():
                out = await self.reranker.alabel_logprobs(parts[0] if len(parts) == 1 else Prompts.concat(parts))
                results, offset = [], 0
                for part in parts:
                    results.append(self.reranker.score_logprobs(part, out.slice(offset, offset + len(part))))
                    offset += len(part)
        except Exception as e:  # the whole call failed: it must fail only the request that broke it
            if len(batch) > 1:  # score each request alone to find out which
                log.warning("an engine call for %d requests failed (%s: %s); scoring them one by one",
                            len(batch), type(e).__name__, e)
                for job in batch:
                    await self._run([job])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        for job, result in zip(batch, results):
            if not job.future.done():
                job.future.set_result(result)


__all__ = ["QueueFull", "Scheduler"]

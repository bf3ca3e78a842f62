"""The server's Prometheus metrics, in a registry of its own (``GET /metrics``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """Requests by endpoint and status, latency, pairs, queue depth and engine batch sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("genrank_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("genrank_request_duration_seconds", "HTTP request latency by endpoint", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.pairs = Counter("genrank_pairs", "(query, document) pairs scored", registry=r)
        self.batch_prompts = Histogram("genrank_batch_prompts", "prompts per engine call", buckets=_SIZE_BUCKETS,
                                       registry=r)
        self.batch_requests = Histogram("genrank_batch_requests", "requests per engine call", buckets=_SIZE_BUCKETS,
                                        registry=r)
        self.engine_seconds = Histogram("genrank_engine_seconds", "duration of engine calls",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.queued = Gauge("genrank_queue_prompts", "prompts waiting for an engine call", registry=r)
        self.pending = Gauge("genrank_pending_pairs", "pairs admitted and not yet answered (--max-queue-pairs)",
                             registry=r)

    def watch_queue(self, queued: Callable[[], float], pending: Callable[[], float]) -> None:
        """Read the queue gauges from these functions at each scrape."""
        self.queued.set_function(queued)
        self.pending.set_function(pending)


__all__ = ["Metrics"]

"""What a server is allowed to take and how it batches: one frozen object, shown without its keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError


@dataclass(frozen=True)
class ServeSettings:
    """Limits, batching and auth of a rerank server.

    ``max_batch_pairs`` is the most prompts one engine call takes from several requests (0: each
    request its own call); ``batch_wait`` the seconds a request waits for others to join it.
    ``max_queue_pairs`` bounds the pairs admitted and not yet answered (429 beyond it).
    ``api_keys``: the bearer keys accepted (none: no auth); never shown in the repr.
    ``body_timeout``: the seconds a client has to send its whole body (408 after);
    ``shutdown_timeout``: the seconds SIGTERM waits for requests in flight before cancelling them.
    """

    model_name: str | None = None  # the name in responses and /v1/models; None: the engine's model
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    max_batch_pairs: int = 256
    batch_wait: float = 0.005
    max_documents: int = 1000
    max_body_bytes: int = 16 * 1024 * 1024
    max_queue_pairs: int = 10_000
    request_timeout: float = 60.0
    body_timeout: float = 20.0  # 16 MiB at 10 Mbit/s takes 13.4 s; under shutdown_timeout
    shutdown_timeout: float = 25.0  # under Kubernetes' default grace period of 30 s

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_body_bytes", "max_queue_pairs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_batch_pairs, int) or self.max_batch_pairs < 0:
            raise InputError(f"max_batch_pairs must be a non-negative integer (0: no batching across requests), "
                             f"got {self.max_batch_pairs!r}")
        if not 0 <= self.batch_wait <= 10:
            raise InputError(f"batch_wait must be 0 to 10 seconds, got {self.batch_wait!r}")
        for name in ("request_timeout", "body_timeout", "shutdown_timeout"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        if any(not isinstance(k, str) or not k.strip() or k != k.strip() for k in self.api_keys):
            raise InputError("api_keys must be non-blank strings without surrounding whitespace")


__all__ = ["ServeSettings"]

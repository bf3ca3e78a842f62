"""Run the rerank service under uvicorn, with a graceful stop on SIGTERM and SIGINT."""

from __future__ import annotations

import copy
import signal
from collections.abc import Callable

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ..reranker import Reranker
from .app import create_app
from .settings import ServeSettings


def serve(reranker: Reranker | Callable[[], Reranker], settings: ServeSettings | None = None, *,
          host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, finish the requests in flight and return.

    Idle connections are closed at once; requests still running after ``settings.shutdown_timeout``
    seconds are cancelled (answered 503), so the server stops within it whatever clients do.

    ``reranker`` may be a function that makes one: the server listens at once and answers
    /health with 503 until it has returned. If it raises, the server stops and ``serve`` raises
    that error.
    """
    settings = settings or ServeSettings()
    failures: list[BaseException] = []

    def stop(error: BaseException) -> None:
        failures.append(error)
        server.should_exit = True

    app = create_app(reranker, settings, on_load_error=stop)
    config = uvicorn.Config(app, host=host, port=port, log_config=_log_config(log_level), access_log=False,
                            lifespan="on", timeout_graceful_shutdown=settings.shutdown_timeout)
    server = uvicorn.Server(config)
    # After a graceful shutdown uvicorn raises the signal that stopped it again, under the handler
    # that was there before it started; a no-op one turns that into a normal return (exit status 0).
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failures:
        raise failures[0]


def _ignore(signum: int, frame: object) -> None:
    return None


def _log_config(level: str) -> dict:
    """uvicorn's logging, with genrank's loggers (access log included) on its handler."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["uvicorn"]["level"] = level.upper()
    config["loggers"]["genrank"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


__all__ = ["serve"]

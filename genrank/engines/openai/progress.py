"""One progress bar for the calls in flight on an engine."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


class Progress:
    """One progress bar for all the calls in flight on an engine: pairs/s, failures and backup requests so far."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bar: tqdm | None = None
        self._calls = 0
        self._counts: dict[str, int] = {}

    @contextmanager
    def call(self, n: int, show: bool) -> Iterator[Progress]:
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

"""A stand-in engine for Ray tests and benchmarks: scores from a hash of the document, a set time per pair.

Importable by Ray workers (tests/ is put on their PYTHONPATH). ``fail_on_call`` raises on that
(1-based) call of this process, as an engine that stops working; documents containing
``UNSCORABLE`` get a per-pair error; ``log`` (a path) gets a line when a call starts and one when it
has scored, with its pair count, so a test can count what was started and scored across processes.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from genrank import Reranker
from genrank.engines import Engine, LabelLogprobs


class StandinEngine(Engine):
    prompt_format = "chat"
    tokenizer = None  # a chat engine without a tokenizer

    def __init__(self, model_name: str = "standin", seconds_per_pair: float = 0.0, fail_on_call: int | None = None,
                 log: str | None = None, fail_to_start: bool = False):
        if fail_to_start:
            raise RuntimeError("no GPU left for the stand-in engine")
        self.model_name = model_name
        self.seconds_per_pair, self.fail_on_call, self.log, self.calls = seconds_per_pair, fail_on_call, log, 0

    def label_logprobs(self, prompts, labels) -> LabelLogprobs:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError(f"stand-in engine stopped on call {self.calls}")
        docs = prompts.documents
        self._log("started", len(docs))
        time.sleep(self.seconds_per_pair * len(docs))
        values = np.array([[-float(hashlib.sha256(f"{d}{k}".encode()).digest()[0] % 7 + 1)
                            for k in range(len(labels.texts))] for d in docs])
        errors = {i: "stand-in cannot score this" for i, d in enumerate(docs) if "UNSCORABLE" in d}
        values[list(errors)] = -np.inf
        self._log("scored", len(docs))
        return LabelLogprobs(values, errors)

    def _log(self, event: str, pairs: int) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {event} {pairs}\n")


class StandinReranker(Reranker):
    """A Reranker that logs ``closed`` each time it is closed."""

    def close(self) -> None:
        self.engine._log("closed", 0)
        super().close()


def standin_reranker(template: str = "lb-reranker-v1", **options) -> Reranker:
    return StandinReranker(engine=StandinEngine(**options), template=template)


def events(log: str, event: str) -> int:
    """How many ``event`` lines the ``log`` file has."""
    try:
        with open(log) as f:
            return sum(line.split()[1] == event for line in f)
    except FileNotFoundError:
        return 0


def scored_pairs(log: str, event: str = "scored") -> int:
    """Pairs the engines scored (or, with ``event="started"``, began to score), from the ``log`` file."""
    try:
        with open(log) as f:
            return sum(int(pairs) for _, logged, pairs in map(str.split, f) if logged == event)
    except FileNotFoundError:
        return 0

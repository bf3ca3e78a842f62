"""A stand-in engine for Ray tests and benchmarks: scores from a hash of the document, a set time per pair.

Importable by Ray workers (tests/ is put on their PYTHONPATH). ``fail_on_call`` raises on that
(1-based) call of this process, as an engine that stops working; documents containing
``UNSCORABLE`` get a per-pair error; ``log`` (a path) gets one line per call with its pair count,
so a test can count what was scored across processes.
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
        time.sleep(self.seconds_per_pair * len(docs))
        values = np.array([[-float(hashlib.sha256(f"{d}{k}".encode()).digest()[0] % 7 + 1)
                            for k in range(len(labels.texts))] for d in docs])
        errors = {i: "stand-in cannot score this" for i, d in enumerate(docs) if "UNSCORABLE" in d}
        values[list(errors)] = -np.inf
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {len(docs)}\n")
        return LabelLogprobs(values, errors)


def standin_reranker(template: str = "lb-reranker-v1", **options) -> Reranker:
    return Reranker(engine=StandinEngine(**options), template=template)


def scored_pairs(log: str) -> int:
    """Pairs the engines scored, from the ``log`` file."""
    try:
        with open(log) as f:
            return sum(int(line.split()[1]) for line in f if line.strip())
    except FileNotFoundError:
        return 0

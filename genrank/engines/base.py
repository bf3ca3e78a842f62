"""The engine base class: prompts in, first-token label log-probabilities (or raw logits) out."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from ..prompts import Labels, Prompts
from ..scorer import ValueKind


@dataclass
class LabelLogprobs:
    """What an engine returns for a batch of N prompts and K labels.

    ``kind`` says what ``values`` are: ``"logprobs"`` (log-probabilities, the default) or
    ``"logits"`` (raw logits, when ``Labels.kind`` asked for them).
    """

    values: np.ndarray  # (N, K) float64 log-probabilities (or logits); -inf where a label was not seen
    errors: dict[int, str] = field(default_factory=dict)  # prompt index -> why it has no result
    altered: set[int] = field(default_factory=set)  # prompt indices whose content was sent changed
    kind: ValueKind = "logprobs"

    def slice(self, start: int, stop: int) -> LabelLogprobs:
        """The results of prompts ``start:stop``, renumbered from 0."""
        return LabelLogprobs(self.values[start:stop], {i - start: why for i, why in self.errors.items() if start <= i < stop},
                             {i - start for i in self.altered if start <= i < stop}, self.kind)


class Engine(ABC):
    """A driver that reads label log-probabilities at the first generated position.

    A subclass provides ``prompt_format``, ``tokenizer`` and ``label_logprobs``; every other
    member has a default here. ``prompt_format`` says what the engine consumes: ``"tokens"``
    (``Prompts.token_ids``, rendered and truncated by genrank; needs ``tokenizer``) or ``"chat"``
    (``Prompts.chats()``, for servers that apply their own chat template; ``tokenizer`` may be
    None). Engines neither build prompts nor compute scores.

    ``kind`` and ``scoring_method`` are what a resumed batch run checks, with ``model_name``,
    that it still scores the same way: they change scores for the same settings (vLLM's pooling
    renormalises over the labels; reading the top log-probabilities misses labels outside them).
    An engine that learns its method from a server decides it when ``scoring_method`` is read.
    ``label_kinds`` says what ``Labels.kind`` the engine answers (log-probabilities by default).
    """

    #: The driver: "hf", "vllm", "lmdeploy", "openai"; a user engine's class, ``module.QualifiedName``.
    kind: ClassVar[str]
    #: How many ``label_logprobs`` calls may run at once from different threads; at 1 the Reranker
    #: runs one call at a time, async callers queued on its own engine thread.
    max_calls_in_flight: int = 1
    #: True when ``alabel_logprobs`` runs on the caller's event loop (a remote engine, which spreads
    #: one call's prompts over its own connections); False when it runs ``label_logprobs`` on a
    #: worker thread, so the service batches concurrent requests into one call.
    native_async: ClassVar[bool] = False
    #: The model's name or path (None when unknown): what a resumed batch run checks it still scores with.
    model_name: str | None = None
    #: How the label log-probabilities are read, where an engine has more than one way (e.g.
    #: "logprob_token_ids", "top_logprobs=20", "pooling"); a property in engines that decide it late.
    scoring_method: str = "default"
    #: The model's ``max_position_embeddings`` where the engine knows it (some recipes fit their prompts to it).
    max_positions: int | None = None
    #: What ``Labels.kind`` the engine can answer ("logprobs" and/or "logits"), preferred first; a
    #: property in engines where it depends on how they were made.
    label_kinds: tuple[ValueKind, ...] = ("logprobs",)
    #: A sentence saying how to get raw logits from this engine ("" when it cannot return them).
    raw_logits_hint: str = ""
    #: Driver options that make the engine return raw logits (``make_engine(raw_logits=True)`` adds them).
    raw_logits_options: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            cls.kind = f"{cls.__module__}.{cls.__qualname__}"

    @property
    @abstractmethod
    def prompt_format(self) -> Literal["tokens", "chat"]:
        """``"tokens"`` or ``"chat"`` (a class attribute in most engines)."""

    @property
    @abstractmethod
    def tokenizer(self) -> Any | None:
        """The model's tokenizer (None for a chat engine that has none)."""

    @abstractmethod
    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        """The (N, K) label log-probabilities of N prompts, in input order; per-prompt failures in ``errors``."""

    async def alabel_logprobs(self, prompts: Prompts, labels: Labels, *,
                              executor: Executor | None = None) -> LabelLogprobs:
        """``label_logprobs`` for async code: run on ``executor``'s thread (the Reranker passes its
        own engine thread), or the event loop's default executor when None."""
        return await asyncio.get_running_loop().run_in_executor(executor, self.label_logprobs, prompts, labels)

    def close(self) -> None:
        """Release what the engine holds (connections, threads). Closing is final. No-op by default."""

    async def aclose(self) -> None:
        """``close`` for async code."""
        self.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def grouped_by_query(prompts: Prompts) -> list[int]:
    """Prompt indices with each (query, instruction)'s prompts together, in first-seen order.

    In-process engines submit prompts in this order so that a prefix cache can reuse each query's
    system+query prefix; they return results in input order.
    """
    first: dict[tuple[str, str | None], int] = {}
    keys = [first.setdefault((q, i), len(first)) for q, i in zip(prompts.queries, prompts.instructions)]
    return sorted(range(len(keys)), key=keys.__getitem__)

"""The engine protocol: prompts in, first-token label log-probabilities (or raw logits) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

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


@runtime_checkable
class Engine(Protocol):
    """A driver that reads label log-probabilities at the first generated position.

    ``prompt_format`` says what the engine consumes: ``"tokens"`` (``Prompts.token_ids``, rendered
    and truncated by genrank; needs ``tokenizer``) or ``"chat"`` (``Prompts.chats()``, for servers
    that apply their own chat template; ``tokenizer`` may be None). Engines neither build prompts
    nor compute scores.

    Optional members: ``async alabel_logprobs(prompts, labels)`` runs on the caller's event loop
    (remote engines; the async API awaits it instead of using a thread), and
    ``max_calls_in_flight``, how many ``label_logprobs`` calls may run at once from different
    threads (1 when absent: the Reranker then runs one call at a time), and ``model_name``, the
    model's name or path (what a resumed batch run checks it still scores with), and
    ``label_kinds``, what ``Labels.kind`` the engine can answer, preferred first (``("logprobs",)``
    when absent), with ``raw_logits_hint``, a sentence saying how to get raw logits from it.
    """

    prompt_format: Literal["tokens", "chat"]

    @property
    def tokenizer(self) -> Any | None: ...

    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs: ...


def label_kinds(engine: Engine) -> tuple[ValueKind, ...]:
    """What an engine can return: log-probabilities and/or raw logits, preferred first."""
    return tuple(getattr(engine, "label_kinds", ("logprobs",)))


def grouped_by_query(prompts: Prompts) -> list[int]:
    """Prompt indices with each (query, instruction)'s prompts together, in first-seen order.

    In-process engines submit prompts in this order so that a prefix cache can reuse each query's
    system+query prefix; they return results in input order.
    """
    first: dict[tuple[str, str | None], int] = {}
    keys = [first.setdefault((q, i), len(first)) for q, i in zip(prompts.queries, prompts.instructions)]
    return sorted(range(len(keys)), key=keys.__getitem__)

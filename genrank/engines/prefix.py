"""Shared-prefix prefill for the transformers driver: which prompts share a prefix, and their batches.

The prompts of one (query, instruction) begin with the same tokens: the template's start and the
query. Their longest common prefix (from the token ids) is run once; the rest of each prompt, its
suffix, then attends to that prefix's keys and values. A *wave* is a set of groups whose prefixes
run as one batch; its prompts' suffixes are then cut into batches of their own, longest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from ..prompts import Prompts


@dataclass(frozen=True)
class PrefixGroup:
    """Prompts that share their first ``prefix`` tokens (each keeps at least one token of its own)."""

    rows: np.ndarray  # prompt indices
    prefix: int


@dataclass(frozen=True)
class Wave:
    """Groups whose prefixes run in one batch, and their prompts cut into suffix batches."""

    groups: list[PrefixGroup]
    batches: list[np.ndarray]  # prompt indices of each suffix batch


def prefix_groups(prompts: Prompts, *, min_rows: int, min_prefix: int) -> tuple[list[PrefixGroup], np.ndarray]:
    """The prompts of each (query, instruction) that share at least ``min_prefix`` tokens, when there
    are at least ``min_rows`` of them, and the indices of all other prompts."""
    by_query: dict[tuple[str, str | None], list[int]] = {}
    for n, key in enumerate(zip(prompts.queries, prompts.instructions)):
        by_query.setdefault(key, []).append(n)
    ids = prompts.token_ids
    groups, alone = [], []
    for rows in by_query.values():
        prefix = common_prefix([ids[n] for n in rows]) if len(rows) >= min_rows else 0
        if prefix >= min_prefix:
            groups.append(PrefixGroup(np.array(rows, dtype=np.int64), prefix))
        else:
            alone.extend(rows)
    return groups, np.array(sorted(alone), dtype=np.int64)


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """The number of leading tokens all ``rows`` share, leaving each at least one token of its own."""
    shared = min(map(len, rows)) - 1
    first = np.asarray(rows[0][:shared])
    for row in rows[1:]:
        differ = np.flatnonzero(np.asarray(row[:shared]) != first[:shared])
        if differ.size:
            shared = int(differ[0])
    return max(shared, 0)


def plan_waves(groups: Sequence[PrefixGroup], lengths: np.ndarray, max_tokens: int, max_rows: int) -> list[Wave]:
    """Waves of ``groups`` and their suffix batches within a budget of ``max_tokens`` and ``max_rows``.

    A wave's prefix batch counts its groups times its longest prefix; a suffix batch counts its
    rows times (its longest prefix + its longest suffix): each row attends to its own copy of the
    prefix's keys and values, so the broadcast prefix is paid for in full.
    """
    waves: list[Wave] = []
    members: list[PrefixGroup] = []
    for group in sorted(groups, key=lambda g: -g.prefix):  # similar prefix lengths pad less
        if members and ((len(members) + 1) * members[0].prefix > max_tokens or len(members) + 1 > max_rows):
            waves.append(_wave(members, lengths, max_tokens, max_rows))
            members = []
        members.append(group)
    if members:
        waves.append(_wave(members, lengths, max_tokens, max_rows))
    return waves


def _wave(groups: list[PrefixGroup], lengths: np.ndarray, max_tokens: int, max_rows: int) -> Wave:
    rows = np.concatenate([g.rows for g in groups])
    prefix = np.concatenate([np.full(len(g.rows), g.prefix) for g in groups])
    suffix = lengths[rows] - prefix
    order = np.argsort(-suffix, kind="stable")  # longest first: the first batch finds out-of-memory early
    rows, prefix, suffix = rows[order], prefix[order], suffix[order]
    batches, start = [], 0
    while start < len(rows):
        end, widest = start + 1, int(prefix[start])
        while end < len(rows) and end - start < max_rows:
            widest_next = max(widest, int(prefix[end]))
            if (end - start + 1) * (widest_next + int(suffix[start])) > max_tokens:
                break
            widest, end = widest_next, end + 1
        batches.append(rows[start:end])
        start = end
    return Wave(groups, batches)


class SharedPrefixCache(DynamicCache):
    """Each layer's prefix keys and values for a batch of suffixes, read and never extended.

    ``update`` returns the prefix followed by the suffix's own keys and values without storing
    them, so a suffix batch holds no more than one layer's worth at a time.
    """

    def __init__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__(ddp_cache_data=layers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)

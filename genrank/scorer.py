"""Turn first-token label log-probabilities into scores (numpy only)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


class ZeroLabelMassWarning(UserWarning):
    """Some pairs put no probability on any label; they got the lowest label value."""


@dataclass(frozen=True)
class Scores:
    """Per-pair scores and the label mass they were computed from."""

    score: np.ndarray  # (N,) float64
    label_mass: np.ndarray  # (N,) sum of label probabilities before renormalising
    zero_mass: int  # pairs whose label mass was 0


def expected_scores(logprobs: np.ndarray, values: np.ndarray | list[float], *, normalize: bool = True,
                    warn: bool = True) -> Scores:
    """Expected label value under the first-token distribution.

    ``logprobs`` is (N, K): the log-probability of each label token at the first generated
    position, ``-inf`` where an engine did not see the label. With ``normalize`` the label
    probabilities are renormalised to sum 1 (the default); without, the sum is taken as is and
    missing labels count 0 (the lb-reranker card's formula). A pair with zero label mass gets the
    lowest label value when normalising (0 without) and is counted in ``zero_mass``, with a
    ``ZeroLabelMassWarning`` unless ``warn`` is False.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] != vals.shape[0]:
        raise ValueError(f"logprobs must have shape (N, {vals.shape[0]}), got {lp.shape}")
    if np.isnan(lp).any() or (lp > 1e-6).any():
        raise ValueError("logprobs must be log-probabilities (<= 0, -inf allowed, no NaN)")
    lp = np.minimum(lp, 0.0)
    top = lp.max(axis=1, keepdims=True)
    seen = np.isfinite(top[:, 0])
    shifted = np.exp(lp - np.where(seen[:, None], top, 0.0))  # stable: the largest term is 1
    total = shifted.sum(axis=1)
    mass = np.where(seen, np.exp(top[:, 0]) * total, 0.0)
    if normalize:
        with np.errstate(invalid="ignore", divide="ignore"):
            score = (shifted @ vals) / total
        score = np.where(seen, score, vals.min())
    else:
        score = np.exp(lp) @ vals
    zero = int((~seen).sum())
    if zero and warn:
        warn_zero_mass(zero, len(lp), vals.min() if normalize else 0.0, stacklevel=3)
    return Scores(score=score, label_mass=mass, zero_mass=zero)


def warn_zero_mass(zero: int, pairs: int, scored: float, *, stacklevel: int = 2) -> None:
    """The ``ZeroLabelMassWarning`` for ``zero`` of ``pairs`` pairs, which got the score ``scored``."""
    warnings.warn(f"{zero} of {pairs} pairs put no probability on any label (scored {scored:g})",
                  ZeroLabelMassWarning, stacklevel=stacklevel + 1)


def best_first(scores: np.ndarray, top_k: int | None = None) -> np.ndarray:
    """Indices of ``scores`` best first, ties in input order, NaN (failed pairs) last; the best ``top_k`` (None: all)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:top_k]


def unit_interval(score: np.ndarray, values: np.ndarray | list[float]) -> np.ndarray:
    """``score`` on [0, 1]: ``(score - lowest value) / (highest - lowest)``, clipped.

    One scale for every template (1-7 digits, yes/no), as rerank services report
    ``relevance_score``; NaN (a failed pair) stays NaN.
    """
    vals = np.asarray(values, dtype=np.float64)
    low, high = vals.min(), vals.max()
    return np.clip((np.asarray(score, dtype=np.float64) - low) / (high - low), 0.0, 1.0)

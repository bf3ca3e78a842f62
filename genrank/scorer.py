"""Turn first-token label log-probabilities or raw logits into scores (numpy only).

Three score kinds, each with its [0, 1] relevance rule:

* ``expected``: the expected label value under the label distribution (lb-reranker's 1-7,
  Qwen3-Reranker's P(yes) over yes+no); relevance is linear on the label values' range.
* ``log_odds``: the difference of two labels' logits, which equals the difference of their
  log-probabilities (mxbai-rerank-v2: logit("1") - logit("0")); relevance is a sigmoid.
* ``logit``: the raw logit of one label (bge-reranker-v2-gemma: "Yes"); it cannot be computed
  from log-probabilities, which subtract a normaliser that changes from prompt to prompt, so
  the engine must return raw logits; relevance is a sigmoid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

SCORE_KINDS = ("expected", "log_odds", "logit")
RELEVANCE_RULES = ("linear", "sigmoid")
ValueKind = Literal["logprobs", "logits"]
VALUE_KINDS: tuple[ValueKind, ...] = ("logprobs", "logits")


class ZeroLabelMassWarning(UserWarning):
    """Some pairs put no probability on any label; they got the lowest label value."""


@dataclass(frozen=True)
class Scores:
    """Per-pair scores and the label mass they were computed from."""

    score: np.ndarray  # (N,) float64
    label_mass: np.ndarray  # (N,) sum of label probabilities before renormalising
    zero_mass: int  # pairs whose label mass was 0
    errors: dict[int, str] = field(default_factory=dict)  # pairs the values cannot score (NaN score)


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


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large negative inputs."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class ScoreRule:
    """How a recipe turns label values into ``score`` (the authors' raw score) and ``relevance`` on [0, 1].

    ``values`` is each label's value: for ``log_odds`` the label with the higher value is the
    positive one; ``logit`` has one label. ``relevance`` is ``"linear"`` (expected values:
    ``(score - lowest value) / (highest - lowest)``) or ``"sigmoid"``: ``sigmoid(score - shift)``.
    """

    kind: str
    values: tuple[float, ...]
    normalize: bool = True
    relevance: str = "linear"
    shift: float = 0.0

    @property
    def accepts(self) -> tuple[ValueKind, ...]:
        """The engine outputs this rule can score: a raw logit needs logits; label mass needs log-probabilities."""
        if self.kind == "logit":
            return ("logits",)
        if self.kind == "expected" and not self.normalize:
            return ("logprobs",)
        return VALUE_KINDS

    @property
    def scale(self) -> str:
        """The range of ``score``, in words."""
        if self.kind == "expected":
            return f"{min(self.values):g} to {max(self.values):g}"
        return "real (logit)" if self.kind == "logit" else "real (log-odds)"

    @property
    def relevance_text(self) -> str:
        """The relevance rule, in words."""
        if self.relevance == "linear":
            return "linear"
        return f"sigmoid(score - {self.shift:g})" if self.shift else "sigmoid(score)"

    def scores(self, values: np.ndarray, kind: ValueKind, *, warn: bool = True) -> Scores:
        """``score`` of each row of (N, K) label values of ``kind``; rows that cannot be scored are in ``errors``.

        ``warn``: a ``ZeroLabelMassWarning`` for pairs without label mass (see ``expected_scores``)."""
        if kind not in self.accepts:
            raise ValueError(f"a {self.kind!r} score{' without normalising' if self.kind == 'expected' else ''} "
                             f"cannot be computed from label {kind}; it needs {' or '.join(self.accepts)}")
        if self.kind == "expected":
            if kind == "logits":  # renormalised over the labels: logits and log-probs give the same
                return _without_mass(expected_scores(_as_logprobs(values), self.values, normalize=True, warn=warn))
            return expected_scores(values, self.values, normalize=self.normalize, warn=warn)
        if self.kind == "log_odds":
            return log_odds_scores(values, self.values, kind)
        return logit_scores(values)

    def relevance_of(self, score: np.ndarray) -> np.ndarray:
        """``score`` on [0, 1] by the rule; NaN stays NaN."""
        if self.relevance == "linear":
            return unit_interval(score, self.values)
        return sigmoid(np.asarray(score, dtype=np.float64) - self.shift)


def log_odds_scores(values: np.ndarray, label_values: tuple[float, ...] | list[float],
                    kind: ValueKind = "logprobs") -> Scores:
    """logit(positive) - logit(negative) of two labels (the positive one has the higher value).

    From log-probabilities the normaliser cancels; a pair where an engine saw only one of the two
    labels cannot be scored and is in ``errors``. The label mass is known from log-probabilities only.
    """
    v = _checked(values, 2, kind)
    pos, neg = (1, 0) if label_values[1] > label_values[0] else (0, 1)
    missing = ~np.isfinite(v).all(axis=1)
    with np.errstate(invalid="ignore"):
        score = np.where(missing, np.nan, v[:, pos] - v[:, neg])
    errors = {int(i): "the engine returned the log-probability of only one of the two labels; "
                      "a log-odds score needs both" for i in np.flatnonzero(missing)}
    if kind == "logprobs":
        mass = np.exp(v).sum(axis=1)
    else:
        mass = np.full(len(v), np.nan)
    return Scores(score, mass, 0, errors)


def logit_scores(values: np.ndarray) -> Scores:
    """The raw logit of the one label; a pair without it is in ``errors``. Label mass is unknown (NaN)."""
    v = _checked(values, 1, "logits")
    missing = ~np.isfinite(v[:, 0])
    score = np.where(missing, np.nan, v[:, 0])
    errors = {int(i): "the engine returned no logit for the label" for i in np.flatnonzero(missing)}
    return Scores(score, np.full(len(v), np.nan), 0, errors)


def _checked(values: np.ndarray, k: int, kind: ValueKind) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != k:
        raise ValueError(f"label values must have shape (N, {k}), got {v.shape}")
    if np.isnan(v).any() or (kind == "logprobs" and (v > 1e-6).any()):
        raise ValueError("label log-probabilities must be <= 0 (-inf allowed, no NaN)" if kind == "logprobs"
                         else "label logits must not be NaN")
    return np.minimum(v, 0.0) if kind == "logprobs" else v


def _as_logprobs(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the labels of (N, K) logits (-inf stays -inf)."""
    v = np.asarray(logits, dtype=np.float64)
    if np.isnan(v).any():
        raise ValueError("label logits must not be NaN")
    top = v.max(axis=1, keepdims=True)
    seen = np.isfinite(top)
    top = np.where(seen, top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = v - top - np.log(np.exp(v - top).sum(axis=1, keepdims=True))
    return np.where(seen, out, -np.inf)


def _without_mass(scores: Scores) -> Scores:
    return Scores(scores.score, np.full(len(scores.score), np.nan), scores.zero_mass, scores.errors)

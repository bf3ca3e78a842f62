"""Fit a calibration: split labelled scores by query, fit Platt scaling and isotonic regression, keep the better.

Both maps are fitted on the fit part only, and judged on the held-out queries, so the metrics in
the file are those of the map it holds on pairs it never saw. Needs scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .calibrator import METHODS, Calibration

ECE_BINS = 15
ECE_RULE = f"expected calibration error over {ECE_BINS} equal-mass bins (the held-out pairs sorted by predicted " \
           f"probability, cut into {ECE_BINS} bins of equal count): sum over bins of the bin's share of pairs " \
           "times |mean predicted - observed rate|"


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"fitting a calibration needs scikit-learn ({e}); install it with: "
                          "pip install 'genrank[calibrate]'") from e


def reliability_bins(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-mass bins of the predictions: each bin's mean prediction, observed rate and count."""
    order = np.argsort(p, kind="stable")
    parts = [part for part in np.array_split(order, min(bins, len(p))) if len(part)]
    return (np.array([p[part].mean() for part in parts]), np.array([y[part].mean() for part in parts]),
            np.array([len(part) for part in parts]))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-mass bins (see ``ECE_RULE``)."""
    predicted, observed, counts = reliability_bins(np.asarray(p, float), np.asarray(y, float), bins)
    return float(np.sum(counts * np.abs(predicted - observed)) / np.sum(counts))


def calibration_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """ECE, Brier score and log-loss of predictions ``p`` for 0/1 labels ``y``, with the pairs and positives."""
    _sklearn()
    from sklearn.metrics import brier_score_loss, log_loss

    p, y = np.asarray(p, float), np.asarray(y, int)
    return {"ece": expected_calibration_error(p, y), "brier": float(brier_score_loss(y, p, labels=[0, 1])),
            "log_loss": float(log_loss(y, p, labels=[0, 1])), "pairs": int(len(y)), "positives": int(y.sum())}


def queries_needed(held_out: float) -> int:
    """The fewest queries that split into a fit and a held-out part with ``held_out`` of them held out."""
    return max(2, math.ceil(1 / (1 - held_out) - 1e-9))


def split_by_query(query_ids: list[str] | np.ndarray, held_out: float = 0.3, seed: int = 0) -> np.ndarray:
    """A boolean mask of the held-out pairs: ``held_out`` of the queries (rounded up), drawn with ``seed``.

    All pairs of a query fall on the same side, so the held-out metrics are those of unseen queries.
    """
    _sklearn()
    from sklearn.model_selection import GroupShuffleSplit

    if not 0 < held_out < 1:
        raise InputError(f"the held-out share must be between 0 and 1, got {held_out!r}")
    groups = np.asarray(query_ids, dtype=object)
    queries = len(set(groups.tolist()))
    too_few = InputError(f"{queries} {'query' if queries == 1 else 'queries'} with labelled pairs cannot be split "
                         f"into a fit and a held-out part with --held-out {held_out:g}: that needs at least "
                         f"{queries_needed(held_out)} queries (and hundreds for a trustworthy calibration)")
    if queries < queries_needed(held_out):
        raise too_few
    try:
        splitter = GroupShuffleSplit(n_splits=1, test_size=held_out, random_state=seed)
        _, test = next(splitter.split(np.zeros(len(groups)), groups=groups))
    except ValueError:  # an empty fit part after rounding the held-out count up
        raise too_few from None
    mask = np.zeros(len(groups), dtype=bool)
    mask[test] = True
    return mask


def check_split(labels: np.ndarray, query_ids: list[str], held_out: float = 0.3, seed: int = 0) -> np.ndarray:
    """``split_by_query``'s held-out mask, or a ValueError if the fit part lacks relevant or not-relevant pairs."""
    held = split_by_query(query_ids, held_out, seed)
    fit, labels = ~held, np.asarray(labels, int)
    positives, pairs = int(labels[fit].sum()), int(fit.sum())
    if positives == 0 or positives == pairs:
        missing = "relevant" if positives == 0 else "not-relevant"
        queries = len(set(np.asarray(query_ids, object)[fit].tolist()))
        raise InputError(f"the fit part ({pairs} pairs of {queries} queries) has no {missing} pairs: a calibration "
                         "needs both; check the labels and --relevant-grade, or add queries")
    return held


def fit_platt(score: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Platt scaling: an unpenalised logistic regression of the label on the score."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=np.inf).fit(np.asarray(score, float)[:, None], y)
    return {"slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}


def fit_isotonic(score: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Isotonic regression: the best non-decreasing map onto [0, 1], clipped beyond the fitted scores."""
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(np.asarray(score, float), y)
    return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}


@dataclass
class FitResult:
    """The chosen calibration, every candidate's held-out metrics, and the held-out data for the picture."""

    calibration: Calibration
    candidates: dict[str, dict[str, Any]]  # method -> held-out metrics
    held_out_relevance: np.ndarray  # uncalibrated, on [0, 1]
    held_out_probability: np.ndarray
    held_out_labels: np.ndarray


def fit_calibration(score: np.ndarray, relevance: np.ndarray, labels: np.ndarray, query_ids: list[str], *,
                    fitted_for: dict[str, Any], data: dict[str, Any] | None = None, method: str | None = None,
                    held_out: float = 0.3, seed: int = 0) -> FitResult:
    """Split by query, fit both maps on the fit part, keep ``method`` or the lower held-out log-loss.

    ``score`` is what the map takes (``ScoredPairs.score``), ``relevance`` the uncalibrated [0, 1]
    value the "before" metrics judge; ``labels`` are 0/1. A ValueError if the fit part lacks
    positives or negatives, or there are too few queries to split.
    """
    _sklearn()
    if method is not None and method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    score, relevance = np.asarray(score, float), np.asarray(relevance, float)
    labels = np.asarray(labels, int)
    held = check_split(labels, query_ids, held_out, seed)
    fit = ~held
    candidates, maps = {}, {}
    for name, fitter in (("platt", fit_platt), ("isotonic", fit_isotonic)):
        maps[name] = Calibration(name, fitter(score[fit], labels[fit]), fitted_for)
        candidates[name] = calibration_metrics(maps[name].probability(score[held]), labels[held])
    chosen = method or min(METHODS, key=lambda m: candidates[m]["log_loss"])
    split = {"held_out_share": held_out, "seed": seed,
             "fit": _part(labels[fit], np.asarray(query_ids, object)[fit]),
             "held_out": _part(labels[held], np.asarray(query_ids, object)[held])}
    metrics = {"ece_bins": ECE_RULE, "part": "held_out",
               "before": {"value": "relevance (uncalibrated, [0, 1])",
                          **calibration_metrics(relevance[held], labels[held])},
               "after": {"value": f"probability ({chosen})", **candidates[chosen]},
               "candidates": {m: {"log_loss": c["log_loss"], "ece": c["ece"], "brier": c["brier"]}
                              for m, c in candidates.items()},
               "chosen_by": "--method" if method else "lower held-out log-loss"}
    calibration = Calibration(chosen, maps[chosen].parameters, fitted_for, {**(data or {}), "split": split}, metrics)
    return FitResult(calibration, candidates, relevance[held], calibration.probability(score[held]), labels[held])


def _part(labels: np.ndarray, query_ids: np.ndarray) -> dict[str, int]:
    return {"queries": len(set(query_ids.tolist())), "pairs": int(len(labels)), "positives": int(labels.sum())}


__all__ = ["ECE_BINS", "ECE_RULE", "FitResult", "calibration_metrics", "check_split", "expected_calibration_error",
           "fit_calibration", "fit_isotonic", "fit_platt", "queries_needed", "reliability_bins", "split_by_query"]

"""Calibrate a Reranker on labelled pairs: score them (resumable), fit, and report.

>>> pairs = from_beir("scifact", max_queries=300)
>>> run = calibrate(Reranker("lightblue/lb-reranker-0.5B-v1.0"), pairs, "CALIB.json")
>>> run.result.calibration.save("CALIB.json")

The pairs are written to ``CALIB.pairs.jsonl`` and scored by ``genrank.batch.score_file`` into
``CALIB.scores.jsonl`` (with its manifest), so an interrupted run resumes where it stopped and a
rerun with other fit options (``method``, ``held_out``, ``seed``) scores nothing again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..batch import BatchSummary, score_file
from ..errors import InputError
from ..reranker import Reranker
from .calibrator import Calibration, fitted_for
from .data import LabelledPairs
from .fit import ECE_BINS, FitResult, fit_calibration


@dataclass
class CalibrationRun:
    """The fit, the scoring run's summary, and the pairs that could not be scored (left out of the fit)."""

    result: FitResult
    scoring: BatchSummary
    failed: dict[int, str]  # pair index -> why
    scores_path: Path


def work_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """Where the pairs and their scores go, beside ``output``: ``CALIB.pairs.jsonl``, ``CALIB.scores.jsonl``."""
    output = Path(output)
    stem = output.with_suffix("") if output.suffix == ".json" else output
    return stem.with_name(stem.name + ".pairs.jsonl"), stem.with_name(stem.name + ".scores.jsonl")


def calibrate(reranker: Reranker, pairs: LabelledPairs, output: str | os.PathLike, *, method: str | None = None,
              held_out: float = 0.3, seed: int = 0, overwrite: bool = False, chunk_size: int = 1024,
              show_progress: bool = False) -> CalibrationRun:
    """Score ``pairs`` with ``reranker`` (files beside ``output``, see ``work_paths``) and fit a calibration.

    Pairs that fail are left out of the fit and returned in ``failed``; if every pair fails, a
    ValueError. ``output`` itself is not written: save ``run.result.calibration`` there.
    """
    if reranker.calibration is not None:
        raise InputError("calibrate scores with an uncalibrated Reranker; build it without calibration=")
    pairs_path, scores_path = work_paths(output)
    content = pairs.jsonl()
    if not pairs_path.exists() or pairs_path.read_bytes() != content:  # unchanged pairs keep their scores resumable
        if scores_path.exists() and not overwrite:  # refused before anything changes
            raise InputError(f"{str(scores_path)!r} holds the scores of other pairs ({str(pairs_path)!r} differs from "
                             "this data); start over with --overwrite (overwrite=True) or choose another output")
        tmp = pairs_path.with_name(pairs_path.name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, pairs_path)
    summary = score_file(pairs_path, scores_path, reranker, format="jsonl", chunk_size=chunk_size,
                         overwrite=overwrite, show_progress=show_progress)
    score, failed = _read_scores(scores_path, len(pairs))
    ok = np.isfinite(score)
    if not ok.any():
        first = failed[min(failed)] if failed else "no score"
        raise InputError(f"none of the {len(pairs)} pairs could be scored (pair 0: {first})")
    data = {**pairs.summary(), "genrank_version": _version()}
    if failed:
        data["not_scored"] = len(failed)
    keep = np.flatnonzero(ok)
    result = fit_calibration(score[keep], reranker.rule.relevance_of(score[keep]), pairs.labels[keep],
                             [pairs.query_ids[i] for i in keep], fitted_for=fitted_for(reranker), data=data,
                             method=method, held_out=held_out, seed=seed)
    return CalibrationRun(result, summary, failed, scores_path)


def _version() -> str:
    from .. import __version__

    return __version__


def _read_scores(path: Path, n: int) -> tuple[np.ndarray, dict[int, str]]:
    """Each pair's score (NaN where it failed) from a ``score_file`` JSONL output, and the failures."""
    score, failed = np.full(n, np.nan), {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            i = int(row["id"])
            if row.get("error") is not None or row.get("score") is None:
                failed[i] = row.get("error") or "no score"
            else:
                score[i] = row["score"]
    return score, failed


def format_table(calibration: Calibration) -> str:
    """The held-out metrics before and after as a text table, with the data and split in one line."""
    m = calibration.metrics
    before, after = m["before"], m["after"]
    lines = [f"{'held-out':<26}{f'ECE ({ECE_BINS} bins)':>16}{'Brier':>10}{'log-loss':>10}"]
    for label, row in (("relevance (uncalibrated)", before), (f"probability ({calibration.method})", after)):
        lines.append(f"{label:<26}{row['ece']:>16.4f}{row['brier']:>10.4f}{row['log_loss']:>10.4f}")
    split = calibration.data.get("split", {})
    fit, held = split.get("fit", {}), split.get("held_out", {})
    other = [f"{name} {c['log_loss']:.4f}" for name, c in m.get("candidates", {}).items()]
    lines.append(f"fit on {fit.get('pairs')} pairs ({fit.get('positives')} relevant) of {fit.get('queries')} queries; "
                 f"held out {held.get('pairs')} pairs ({held.get('positives')} relevant) of {held.get('queries')} "
                 f"queries; held-out log-loss: {', '.join(other)}; {calibration.method} chosen "
                 f"({m.get('chosen_by')}); ECE bins are equal-mass")
    return "\n".join(lines)


def data_warnings(calibration: Calibration) -> list[str]:
    """What makes this calibration rough: too few held-out pairs, positives or queries."""
    split = calibration.data.get("split", {})
    fit, held = split.get("fit", {}), split.get("held_out", {})
    out = []
    if (fit.get("positives") or 0) < 50 or (fit.get("pairs", 0) - (fit.get("positives") or 0)) < 50:
        out.append(f"the fit part has {fit.get('positives')} relevant and "
                   f"{fit.get('pairs', 0) - (fit.get('positives') or 0)} not-relevant pairs; with fewer than 50 of "
                   "each the map is rough (see the README's Calibration section)")
    if (held.get("pairs") or 0) < 1000:
        out.append(f"only {held.get('pairs')} held-out pairs: the metrics are noisy (ECE over {ECE_BINS} bins "
                   "wants a thousand or more)")
    if held.get("positives") in (0, held.get("pairs")):
        out.append("the held-out part has only one kind of label: its metrics say little")
    return out


__all__ = ["CalibrationRun", "calibrate", "data_warnings", "format_table", "work_paths"]

"""Rerankers for LangChain, LlamaIndex and Haystack, built on a genrank Reranker.

Each framework has its own module, which imports the framework when it is imported:

- ``genrank.integrations.langchain.GenrankRerank``: a LangChain document compressor
  (``pip install 'genrank[langchain]'``);
- ``genrank.integrations.llama_index.GenrankRerank``: a LlamaIndex node postprocessor
  (``pip install 'genrank[llama-index]'``);
- ``genrank.integrations.haystack.GenrankRanker``: a Haystack component
  (``pip install 'genrank[haystack]'``).

Every adapter reports the relevance on [0, 1] (``ScoredPairs.relevance``, the scale rerank
services use) as the framework's score, and keeps the raw expected label value and the label mass
in the document's metadata under ``SCORE_KEY`` and ``LABEL_MASS_KEY``. With a calibration
(``calibration=`` on the adapter, or the Reranker's own) the score is the calibrated probability
that the document is relevant, and the uncalibrated relevance goes under ``RELEVANCE_KEY``;
``min_relevance`` drops documents whose reported score is below it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..calibration import Calibration, load_calibration
from ..errors import MissingExtra
from ..reranker import Reranker, ScoredPairs, ScoringError
from ..scorer import best_first
from ..validation import query_pairs

SCORE_KEY = "genrank_score"  # the expected label value (1-7 for lb-reranker)
LABEL_MASS_KEY = "genrank_label_mass"  # probability the model put on the labels
RELEVANCE_KEY = "genrank_relevance"  # the uncalibrated relevance, when the score is calibrated


@dataclass(frozen=True)
class Hit:
    """One ranked document: its index in the input, the relevance it is reported with (on [0, 1]; the
    calibrated probability with a calibration), raw score, label mass, and the uncalibrated relevance
    when calibrated."""

    index: int
    relevance: float
    score: float
    label_mass: float
    uncalibrated: float | None = None

    def metadata(self) -> dict[str, float]:
        """What the adapters add to a document's metadata."""
        added = {SCORE_KEY: self.score, LABEL_MASS_KEY: self.label_mass}
        return added if self.uncalibrated is None else {**added, RELEVANCE_KEY: self.uncalibrated}


def adapter_calibration(reranker: Reranker, calibration: str | os.PathLike | Calibration | None,
                        allow_other_model: bool = False) -> Calibration | None:
    """The calibration an adapter reports with: its own (checked against ``reranker``), else the Reranker's."""
    if calibration is None:
        return reranker.calibration
    calibration = load_calibration(calibration)
    calibration.check(reranker, allow_other_model=allow_other_model)
    return calibration


def rank_texts(reranker: Reranker, query: str, texts: Sequence[str], top_n: int | None,
               calibration: Calibration | None = None, min_relevance: float | None = None,
               instruction: str | None = None) -> list[Hit]:
    """The best ``top_n`` texts for ``query`` (all if None), best first, as ``Reranker.rank`` orders them;
    with ``calibration`` reported as probabilities; those below ``min_relevance`` left out;
    ``instruction`` replaces the Reranker's (None: the Reranker's)."""
    pairs = query_pairs(query, texts)
    return _hits(reranker.score_details(pairs, reranker.instruction_per_pair(instruction, len(pairs))), top_n,
                 calibration, min_relevance)


async def arank_texts(reranker: Reranker, query: str, texts: Sequence[str], top_n: int | None,
                      calibration: Calibration | None = None, min_relevance: float | None = None,
                      instruction: str | None = None) -> list[Hit]:
    """``rank_texts`` for async code."""
    pairs = query_pairs(query, texts)
    return _hits(await reranker.ascore_details(pairs, reranker.instruction_per_pair(instruction, len(pairs))), top_n,
                 calibration, min_relevance)


def framework_error(module: str, package: str, extra: str) -> MissingExtra:
    """The error raised when ``genrank.integrations.<module>`` cannot import its framework."""
    return MissingExtra(f"genrank.integrations.{module} needs {package}, which is not installed; "
                       f"install it with: pip install 'genrank[{extra}]'")


def _hits(result: ScoredPairs, top_n: int | None, calibration: Calibration | None,
          min_relevance: float | None) -> list[Hit]:
    if result.errors:
        raise ScoringError(result)
    reported = result.relevance if calibration is None else calibration.probability(result.score)
    order = best_first(result.score)
    if min_relevance is not None:
        order = order[reported[order] >= min_relevance]
    return [Hit(int(i), float(reported[i]), float(result.score[i]), float(result.label_mass[i]),
                None if calibration is None else float(result.relevance[i]))
            for i in order[:top_n]]


__all__ = ["LABEL_MASS_KEY", "RELEVANCE_KEY", "SCORE_KEY", "Hit", "adapter_calibration", "arank_texts",
           "framework_error", "rank_texts"]

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
in the document's metadata under ``SCORE_KEY`` and ``LABEL_MASS_KEY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import MissingExtra
from ..reranker import Reranker, ScoredPairs, ScoringError
from ..scorer import best_first
from ..validation import query_pairs

SCORE_KEY = "genrank_score"  # the expected label value (1-7 for lb-reranker)
LABEL_MASS_KEY = "genrank_label_mass"  # probability the model put on the labels


@dataclass(frozen=True)
class Hit:
    """One ranked document: its index in the input, relevance on [0, 1], raw score and label mass."""

    index: int
    relevance: float
    score: float
    label_mass: float


def rank_texts(reranker: Reranker, query: str, texts: Sequence[str], top_n: int | None) -> list[Hit]:
    """The best ``top_n`` texts for ``query`` (all if None), best first, as ``Reranker.rank`` orders them."""
    return _hits(reranker.score_details(query_pairs(query, texts)), top_n)


async def arank_texts(reranker: Reranker, query: str, texts: Sequence[str], top_n: int | None) -> list[Hit]:
    """``rank_texts`` for async code."""
    return _hits(await reranker.ascore_details(query_pairs(query, texts)), top_n)


def framework_error(module: str, package: str, extra: str) -> MissingExtra:
    """The error raised when ``genrank.integrations.<module>`` cannot import its framework."""
    return MissingExtra(f"genrank.integrations.{module} needs {package}, which is not installed; "
                       f"install it with: pip install 'genrank[{extra}]'")


def _hits(result: ScoredPairs, top_n: int | None) -> list[Hit]:
    if result.errors:
        raise ScoringError(result)
    order = best_first(result.score, top_n)
    return [Hit(int(i), float(result.relevance[i]), float(result.score[i]), float(result.label_mass[i]))
            for i in order]


__all__ = ["LABEL_MASS_KEY", "SCORE_KEY", "Hit", "arank_texts", "framework_error", "rank_texts"]

"""A LangChain document compressor that reranks with genrank.

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from genrank import Reranker
    from genrank.integrations.langchain import GenrankRerank

    compressor = GenrankRerank(reranker=Reranker("lightblue/lb-reranker-0.5B-v1.0"), top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path

from ..calibration import Calibration
from ..reranker import Reranker
from . import Hit, adapter_calibration, arank_texts, framework_error, rank_texts

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, Field, PrivateAttr, SkipValidation, model_validator
except ImportError as e:
    raise framework_error("langchain", "langchain-core", "langchain") from e


class GenrankRerank(BaseDocumentCompressor):
    """Keep the ``top_n`` documents most relevant to the query (all if None), best first.

    Like LangChain's CohereRerank, each returned document is a copy whose metadata gains
    ``relevance_score`` (relevance on [0, 1]), plus ``genrank_score`` (the expected label value)
    and ``genrank_label_mass``; the caller's documents are not changed. The text scored is
    ``page_content``; empty texts are scored too. With a calibration (``calibration=``, or the
    Reranker's own) ``relevance_score`` is the calibrated probability that the document is
    relevant and ``genrank_relevance`` the uncalibrated relevance. ``instruction`` replaces the
    Reranker's for this compressor's calls, so one loaded model serves several tasks.
    """

    reranker: Reranker
    """The genrank Reranker that scores the documents."""
    top_n: int | None = Field(default=3, ge=1)
    """Number of documents to return; None returns them all."""
    calibration: SkipValidation[str | Path | Calibration | None] = None
    """A calibration (CALIB.json from genrank calibrate) to report probabilities with (default: the Reranker's)."""
    allow_other_model: bool = False
    """Use a calibration fitted for another model name."""
    min_relevance: float | None = Field(default=None, ge=0, le=1)
    """Drop documents whose relevance_score is below this."""
    instruction: str | None = None
    """Task instruction for instruction-aware recipes (default: the Reranker's)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    _calibration: Calibration | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_reranker_settings(self) -> GenrankRerank:
        if self.instruction is not None:
            self.reranker.check_instruction(self.instruction)
        self._calibration = adapter_calibration(self.reranker, self.calibration, self.allow_other_model)
        return self

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The best ``top_n`` documents for ``query``, best first, scores in their metadata."""
        if not documents:
            return []
        hits = rank_texts(self.reranker, query, [d.page_content for d in documents], self.top_n, self._calibration,
                          self.min_relevance, self.instruction)
        return [_scored(documents[hit.index], hit) for hit in hits]

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        """``compress_documents`` on the Reranker's async API."""
        if not documents:
            return []
        hits = await arank_texts(self.reranker, query, [d.page_content for d in documents], self.top_n,
                                 self._calibration, self.min_relevance, self.instruction)
        return [_scored(documents[hit.index], hit) for hit in hits]


def _scored(document: Document, hit: Hit) -> Document:
    metadata = {**deepcopy(document.metadata), "relevance_score": hit.relevance, **hit.metadata()}
    return document.model_copy(update={"metadata": metadata})


__all__ = ["GenrankRerank"]

"""A LlamaIndex node postprocessor that reranks with genrank.

    from genrank import Reranker
    from genrank.integrations.llama_index import GenrankRerank

    rerank = GenrankRerank(reranker=Reranker("lightblue/lb-reranker-0.5B-v1.0"), top_n=3)
    query_engine = index.as_query_engine(similarity_top_k=10, node_postprocessors=[rerank])
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

from ..calibration import Calibration
from ..reranker import Reranker
from . import Hit, adapter_calibration, arank_texts, framework_error, rank_texts

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.callbacks.base import EventContext
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as e:
    raise framework_error("llama_index", "llama-index-core", "llama-index") from e

dispatcher = get_dispatcher(__name__)
RETRIEVAL_SCORE_KEY = "retrieval_score"


class GenrankRerank(BaseNodePostprocessor):
    """Keep the ``top_n`` nodes most relevant to the query, best first, with genrank's relevance as score.

    As in LlamaIndex's SentenceTransformerRerank, the text scored is
    ``node.get_content(metadata_mode=metadata_mode)`` (the node's embedding text by default) and
    ``keep_retrieval_score`` keeps the retriever's score in ``metadata["retrieval_score"]``.
    ``NodeWithScore.score`` is the relevance on [0, 1]; ``genrank_score`` (the expected label
    value) and ``genrank_label_mass`` go into the node's metadata, hidden from the LLM and
    embedding text. Returned nodes are copies: the caller's nodes are not changed. With a
    calibration (``calibration=``, or the Reranker's own) the score is the calibrated probability
    that the node is relevant, and ``genrank_relevance`` the uncalibrated relevance;
    ``min_relevance`` drops nodes scored below it. ``instruction`` replaces the Reranker's for this
    postprocessor's calls, so one loaded model serves several tasks.
    """

    top_n: int = Field(default=2, ge=1, description="Number of nodes to return, best first.")
    metadata_mode: MetadataMode = Field(default=MetadataMode.EMBED,
                                        description="Which metadata goes into the text that is scored.")
    keep_retrieval_score: bool = Field(default=False,
                                       description="Keep the retrieval score in metadata['retrieval_score'].")
    min_relevance: float | None = Field(default=None, ge=0, le=1,
                                        description="Drop nodes whose score is below this.")
    instruction: str | None = Field(default=None,
                                    description="Task instruction for instruction-aware recipes (default: the "
                                                "Reranker's).")
    _reranker: Reranker = PrivateAttr()
    _calibration: Calibration | None = PrivateAttr(default=None)

    def __init__(self, reranker: Reranker, top_n: int = 2, metadata_mode: MetadataMode = MetadataMode.EMBED,
                 keep_retrieval_score: bool = False, *, calibration: str | os.PathLike | Calibration | None = None,
                 allow_other_model: bool = False, min_relevance: float | None = None,
                 instruction: str | None = None, **kwargs: Any):
        if not isinstance(reranker, Reranker):
            raise TypeError(f"reranker must be a genrank Reranker, got {type(reranker).__name__}")
        if instruction is not None:
            reranker.check_instruction(instruction)
        super().__init__(top_n=top_n, metadata_mode=metadata_mode, keep_retrieval_score=keep_retrieval_score,
                         min_relevance=min_relevance, instruction=instruction, **kwargs)
        self._reranker = reranker
        self._calibration = adapter_calibration(reranker, calibration, allow_other_model)

    @classmethod
    def class_name(cls) -> str:
        return "GenrankRerank"

    @property
    def reranker(self) -> Reranker:
        """The genrank Reranker that scores the nodes."""
        return self._reranker

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        query = _query(query_bundle)
        if not nodes:
            return []
        with self._start(nodes, query_bundle) as event:
            hits = rank_texts(self._reranker, query, self._texts(nodes), self.top_n, self._calibration,
                              self.min_relevance, self.instruction)
            return self._end(event, [self._scored(nodes[hit.index], hit) for hit in hits])

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        query = _query(query_bundle)
        if not nodes:
            return []
        with self._start(nodes, query_bundle) as event:
            hits = await arank_texts(self._reranker, query, self._texts(nodes), self.top_n, self._calibration,
                                     self.min_relevance, self.instruction)
            return self._end(event, [self._scored(nodes[hit.index], hit) for hit in hits])

    def _texts(self, nodes: list[NodeWithScore]) -> list[str]:
        return [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> AbstractContextManager[EventContext]:
        """Report the reranking to LlamaIndex's instrumentation and callbacks, as its own rerankers do."""
        model = self._reranker.engine.model_name or type(self._reranker.engine).__name__
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=model))
        return self.callback_manager.event(CBEventType.RERANKING, payload={
            EventPayload.NODES: nodes, EventPayload.MODEL_NAME: model,
            EventPayload.QUERY_STR: query_bundle.query_str, EventPayload.TOP_K: self.top_n})

    @staticmethod
    def _end(event: EventContext, ranked: list[NodeWithScore]) -> list[NodeWithScore]:
        event.on_end(payload={EventPayload.NODES: ranked})
        dispatcher.event(ReRankEndEvent(nodes=ranked))
        return ranked

    def _scored(self, item: NodeWithScore, hit: Hit) -> NodeWithScore:
        node = item.node
        added: dict[str, Any] = hit.metadata()
        if self.keep_retrieval_score:
            added[RETRIEVAL_SCORE_KEY] = item.score
        copy = node.model_copy(update={
            "metadata": {**node.metadata, **added},
            "excluded_llm_metadata_keys": _with(node.excluded_llm_metadata_keys, added),
            "excluded_embed_metadata_keys": _with(node.excluded_embed_metadata_keys, added),
        })
        return NodeWithScore(node=copy, score=hit.relevance)


def _query(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None:
        raise ValueError("GenrankRerank needs the query: pass query_str= or query_bundle= to postprocess_nodes")
    return query_bundle.query_str


def _with(keys: list[str], added: dict[str, Any]) -> list[str]:
    return [*keys, *(k for k in added if k not in keys)]


__all__ = ["GenrankRerank"]

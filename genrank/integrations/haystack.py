"""A Haystack ranker component that reranks with genrank.

    from haystack import Pipeline
    from genrank.integrations.haystack import GenrankRanker

    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store))
    pipe.add_component("ranker", GenrankRanker(model="lightblue/lb-reranker-0.5B-v1.0", top_k=3))
    pipe.connect("retriever.documents", "ranker.documents")
    pipe.run({"retriever": {"query": query}, "ranker": {"query": query}})
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..calibration import Calibration
from ..reranker import Reranker
from . import Hit, adapter_calibration, arank_texts, framework_error, rank_texts

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.utils import Secret, deserialize_secrets_inplace
except ImportError as e:
    raise framework_error("haystack", "haystack-ai", "haystack") from e


@component
class GenrankRanker:
    """Rank documents by their relevance to the query with a genrank Reranker, best first.

    ``Document.score`` is the relevance on [0, 1]; ``meta["genrank_score"]`` is the expected label
    value and ``meta["genrank_label_mass"]`` the label mass. Returned documents are copies. As in
    Haystack's SentenceTransformersSimilarityRanker, documents are first deduplicated by id
    (keeping the one with the highest score), ``meta_fields_to_embed`` are joined before the
    content with ``embedding_separator``, and ``score_threshold`` (genrank's ``min_relevance``)
    drops documents below it. With ``calibration`` (the path of a CALIB.json from genrank
    calibrate) ``Document.score`` is the calibrated probability that the document is relevant and
    ``meta["genrank_relevance"]`` the uncalibrated relevance.

    The Reranker is built from the init arguments (model, engine, template, ...) in ``warm_up``
    (``self.reranker`` is None until then), so a pipeline with this component saves to YAML and
    loads back. ``api_key`` (a remote engine's
    key) is a Haystack Secret; keys and passwords in ``engine_options`` are refused, as they would be
    written into the pipeline file.
    """

    def __init__(self, model: str | Path | None = None, *, engine: str = "auto",
                 template: str | Path | None = None, max_length: int | None = None, instruction: str | None = None,
                 engine_options: dict[str, Any] | None = None, api_key: Secret | None = None, top_k: int = 10,
                 meta_fields_to_embed: list[str] | None = None, embedding_separator: str = "\n",
                 score_threshold: float | None = None, calibration: str | None = None,
                 allow_other_model: bool = False):
        """
        :param model: Model id or path; None takes the recipe's default model.
        :param engine: Engine name: "auto", "hf", "vllm", "lmdeploy" or "openai".
        :param template: Recipe name or path of a recipe file; None: the recipe whose models name the model.
        :param max_length: Prompts are cut to this many tokens; None: the recipe's.
        :param instruction: Task instruction, for instruction-aware templates.
        :param engine_options: Keyword arguments for the engine (device, dtype, base_url, ...).
        :param api_key: The remote engine's API key, as a Secret (e.g. ``Secret.from_env_var("GENRANK_API_KEY")``).
        :param top_k: The most documents to return.
        :param meta_fields_to_embed: Metadata fields to score with the content, before it.
        :param embedding_separator: Separator between those fields and the content.
        :param score_threshold: Return only documents with at least this relevance (the calibrated probability
            with a calibration).
        :param calibration: Path of a calibration file (genrank calibrate) to report probabilities with.
        :param allow_other_model: Use a calibration fitted for another model name.
        """
        if not isinstance(engine, str):
            raise TypeError(f"engine must be an engine name (auto, hf, vllm, lmdeploy, openai), got "
                            f"{type(engine).__name__}: GenrankRanker builds its Reranker so that it can be saved")
        _check_top_k(top_k)
        engine_options = dict(engine_options or {})
        _check_no_secrets(engine_options)
        self.model = None if model is None else str(model)
        self.engine = engine
        self.template = None if template is None else str(template)
        self.max_length = max_length
        self.instruction = instruction
        self.engine_options = engine_options
        self.api_key = api_key
        self.top_k = top_k
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.score_threshold = score_threshold
        self.calibration = None if calibration is None else str(calibration)
        self.allow_other_model = allow_other_model
        self.reranker: Reranker | None = None
        self._calibration: Calibration | None = None

    def warm_up(self) -> None:
        """Load the model (once)."""
        if self.reranker is None:
            key = self.api_key.resolve_value() if self.api_key is not None else None
            options = {**self.engine_options, **({"api_key": key} if key else {})}
            self.reranker = Reranker(self.model, engine=self.engine, template=self.template,
                                     max_length=self.max_length, instruction=self.instruction, **options)
        if self._calibration is None:
            self._calibration = adapter_calibration(self.reranker, self.calibration, self.allow_other_model)

    def close(self) -> None:
        """Close the Reranker ``warm_up`` built (its engine's connections and threads); a later run builds another."""
        reranker, self.reranker = self.reranker, None
        if reranker is not None:
            reranker.close()

    def to_dict(self) -> dict[str, Any]:
        """This component's init arguments, for pipeline files."""
        return default_to_dict(
            self, model=self.model, engine=self.engine, template=self.template, max_length=self.max_length,
            instruction=self.instruction, engine_options=self.engine_options,
            api_key=self.api_key.to_dict() if self.api_key is not None else None, top_k=self.top_k,
            meta_fields_to_embed=self.meta_fields_to_embed, embedding_separator=self.embedding_separator,
            score_threshold=self.score_threshold, calibration=self.calibration,
            allow_other_model=self.allow_other_model)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenrankRanker:
        """A component from ``to_dict``'s output."""
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None,
            score_threshold: float | None = None, instruction: str | None = None) -> dict[str, list[Document]]:
        """
        The documents ranked by relevance to ``query``, best first.

        :param query: The query.
        :param documents: The documents to rank.
        :param top_k: The most documents to return; overrides the init value.
        :param score_threshold: Return only documents with at least this relevance; overrides the init value.
        :param instruction: Task instruction for this run, for instruction-aware templates; overrides the init value.
        :returns: ``{"documents": [...]}``, each with ``score`` set.
        """
        top_k, threshold, unique = self._prepare(documents, top_k, score_threshold)
        if not unique:
            return {"documents": []}
        self.warm_up()
        return {"documents": _ranked(unique, rank_texts(self.reranker, query, self._texts(unique), None,
                                                        self._calibration, threshold, instruction), top_k)}

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, documents: list[Document], top_k: int | None = None,
                        score_threshold: float | None = None,
                        instruction: str | None = None) -> dict[str, list[Document]]:
        """``run`` on the Reranker's async API (the engine runs off the event loop)."""
        top_k, threshold, unique = self._prepare(documents, top_k, score_threshold)
        if not unique:
            return {"documents": []}
        self.warm_up()
        hits = await arank_texts(self.reranker, query, self._texts(unique), None, self._calibration, threshold,
                                 instruction)
        return {"documents": _ranked(unique, hits, top_k)}

    def _prepare(self, documents: list[Document], top_k: int | None,
                 score_threshold: float | None) -> tuple[int, float | None, list[Document]]:
        top_k = self.top_k if top_k is None else top_k
        _check_top_k(top_k)
        threshold = self.score_threshold if score_threshold is None else score_threshold
        return top_k, threshold, _deduplicated(documents)

    def _texts(self, documents: list[Document]) -> list[str]:
        texts = []
        for doc in documents:
            fields = [str(doc.meta[k]) for k in self.meta_fields_to_embed if doc.meta.get(k) is not None]
            texts.append(self.embedding_separator.join([*fields, doc.content or ""]))
        return texts


def _ranked(documents: list[Document], hits: list[Hit], top_k: int) -> list[Document]:
    return [replace(documents[h.index], score=h.relevance, meta={**documents[h.index].meta, **h.metadata()})
            for h in hits[:top_k]]


def _deduplicated(documents: list[Document]) -> list[Document]:
    """One document per id, the one with the highest score (as Haystack's rankers do), in first-seen order."""
    best: dict[str, Document] = {}
    for doc in documents:
        kept = best.get(doc.id)
        if kept is None or _score(doc) > _score(kept):
            best[doc.id] = doc
    return list(best.values())


def _score(doc: Document) -> float:
    return float("-inf") if doc.score is None else doc.score


def _check_top_k(top_k: Any) -> None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k <= 0:
        raise ValueError(f"top_k must be > 0, got {top_k!r}")


def _check_no_secrets(engine_options: dict[str, Any]) -> None:
    if "api_key" in engine_options:
        raise ValueError("engine_options must not hold api_key: it would be written into pipeline files; "
                         "pass api_key=Secret.from_env_var('GENRANK_API_KEY') instead")
    base_url = engine_options.get("base_url")
    if isinstance(base_url, str) and urlsplit(base_url).password is not None:
        raise ValueError("engine_options['base_url'] holds a password, which would be written into pipeline "
                         "files; pass the key as api_key=Secret.from_env_var(...) instead")


__all__ = ["GenrankRanker"]

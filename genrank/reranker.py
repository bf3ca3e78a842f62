"""The Reranker: pairs -> prompts -> engine -> label log-probabilities -> scores."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from .engines import Engine, LabelLogprobs, make_engine
from .engines.base import label_kinds
from .pieces import PieceBuilder, prompt_builder
from .prompts import LONG_DOCUMENTS, LongDocuments, Prompts
from .templates import DEFAULT_TEMPLATE, Template, load_template, template_for_model

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class ScoringError(RuntimeError):
    """Some pairs could not be scored; ``result`` holds every pair's outcome."""

    def __init__(self, result: ScoredPairs):
        self.result = result
        first = sorted(result.errors.items())[:3]
        shown = "; ".join(f"pair {i}: {why}" for i, why in first)
        super().__init__(f"{len(result.errors)} of {len(result.score)} pairs could not be scored ({shown})")


@dataclass
class ScoredPairs:
    """Per-pair outcome, in input order. Failed pairs have NaN score and an entry in ``errors``.

    ``score`` is the recipe's raw score, as its authors' code gives it (the expected label value,
    1-7 for lb-reranker; a log-odds or a logit for others); ``relevance`` is on [0, 1] by the
    recipe's rule (linear for expected values, the authors' sigmoid for logits), the scale rerank
    services report. ``label_mass`` is NaN where the engine returned raw logits.
    """

    score: np.ndarray  # (N,) float64
    label_mass: np.ndarray  # (N,) probability the model put on the labels, before renormalising
    truncated: np.ndarray  # (N,) bool: query or document cut to fit max_length
    errors: dict[int, str] = field(default_factory=dict)
    zero_mass: int = 0  # pairs with no probability on any label (scored with the lowest label value)
    relevance: np.ndarray | None = None  # (N,) float64 on [0, 1]
    altered: np.ndarray | None = None  # (N,) bool: special-token text in the content was neutralised
    windows: np.ndarray | None = None  # (N,) int: prompts per pair (long_documents="chunks")

    def __len__(self) -> int:
        return len(self.score)


def check_text(value: Any, what: str, *, allow_empty: bool = True) -> str:
    """``value`` if it is a string (non-blank unless ``allow_empty``), else a ValueError naming ``what``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__} {value!r:.80}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{what} is empty")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, e.g. from a JSON "\ud83d" escape
            raise ValueError(f"{what} is not valid Unicode: lone surrogate {value[e.start]!r} at character "
                             f"{e.start}") from None
    return value


def split_pairs(pairs: Iterable[Sequence[str]]) -> tuple[list[str], list[str]]:
    """Validate (query, document) pairs and return the queries and documents."""
    queries, documents = [], []
    for n, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"pairs[{n}] must be a (query, document) pair, got {pair!r:.80}")
        queries.append(check_text(pair[0], f"pairs[{n}] query", allow_empty=False))
        documents.append(check_text(pair[1], f"pairs[{n}] document"))
    return queries, documents


def query_pairs(query: str, documents: Sequence[str]) -> list[tuple[str, str]]:
    """``(query, document)`` for each document, after checking the query and the list."""
    check_text(query, "query", allow_empty=False)
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise ValueError(f"documents must be a list of strings, got {type(documents).__name__} {documents!r:.80}")
    return [(query, check_text(d, f"documents[{n}]")) for n, d in enumerate(documents)]


class Reranker:
    """Score (query, document) pairs with a causal LM's first-token label probabilities.

    >>> rr = Reranker("lightblue/lb-reranker-0.5B-v1.0", engine="hf")
    >>> rr.rank("Who wrote 'To Kill a Mockingbird'?", docs, top_k=3, return_documents=True)

    ``engine`` is ``"auto"`` (vLLM when installed with a GPU, else transformers), ``"hf"``,
    ``"vllm"``, ``"lmdeploy"``, ``"openai"`` or an Engine instance; other keyword arguments go to
    the engine's constructor. ``template`` is a recipe name, a TOML path or a Template; without
    it the recipe whose ``models`` name the model is used (else ``lb-reranker-v1``), and
    ``max_length`` defaults to the recipe's (1024 for recipes without one). ``instruction`` is
    the task instruction for recipes that take one. ``normalize=False`` uses the lb-reranker
    card's formula (label probabilities not renormalised) to reproduce published numbers. ``long_documents`` is what
    happens to a document too long for ``max_length``: ``"truncate"`` cuts it, ``"chunks"`` scores
    each window of it and keeps the best window's score.

    Every method has an async twin (``arank``, ``arerank``, ``ascore``, ``ascore_details``): a
    remote engine runs on the caller's event loop, an in-process one on a worker thread, one call
    at a time.
    """

    def __init__(self, model: str | None = None, *, engine: str | Engine = "auto",
                 template: str | Path | Template | None = None, max_length: int | None = None,
                 normalize: bool | None = None, instruction: str | None = None,
                 long_documents: LongDocuments = "truncate", chunk_size: int = 4096, show_progress: bool = False,
                 **engine_options: Any):
        named = model or (getattr(engine, "model_name", None) if not isinstance(engine, str) else None)
        self.template = _recipe(template, named)
        if instruction is not None:
            self._check_takes_instruction()
            check_text(instruction, "instruction")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if long_documents not in LONG_DOCUMENTS:
            raise ValueError(f"long_documents must be one of {LONG_DOCUMENTS}, got {long_documents!r}")
        model = model or (None if named else self.template.default_model)
        self.engine = make_engine(engine, model, raw_logits=self.template.score.accepts == ("logits",),
                                  **engine_options)
        self.rule = self.template.score_rule(getattr(self.engine, "model_name", None) or model, normalize)
        kind = self._value_kind()  # before the prompts: a setup error every request would share
        self.builder = prompt_builder(self.template, self.engine.tokenizer, max_length, self.engine.prompt_format,
                                      getattr(self.engine, "max_positions", None))
        if self.engine.prompt_format == "tokens" and self.builder.labels.token_ids is None:
            raise ValueError(f"engine {type(self.engine).__name__} needs a tokenizer")
        if long_documents == "chunks" and self.engine.tokenizer is None:
            raise ValueError("long_documents='chunks' needs the model's tokenizer (pass tokenizer=... to the engine)")
        if long_documents == "chunks" and isinstance(self.builder, PieceBuilder):
            raise ValueError(f"long_documents='chunks' is not available with recipe {self.template.name!r}, whose "
                             "authors' code cuts long documents; use long_documents='truncate'")
        self.labels = replace(self.builder.labels, kind=kind)
        self.normalize = self.rule.normalize
        self.instruction = instruction
        self.long_documents = long_documents
        self.chunk_size = chunk_size
        self.show_progress = show_progress
        # An engine that cannot take concurrent calls gets one at a time, from any thread.
        self._calls_in_flight = max(1, int(getattr(self.engine, "max_calls_in_flight", 1)))
        self._engine_lock = threading.Lock() if self._calls_in_flight == 1 else nullcontext()
        # Async callers of such an engine queue here (a cancelled caller's call is dropped), not on
        # the event loop's default executor, whose threads the application needs for other work.
        self._engine_thread = (ThreadPoolExecutor(1, thread_name_prefix="genrank-engine")
                               if self._calls_in_flight == 1 else None)

    def __repr__(self) -> str:
        return f"Reranker(engine={self.engine!r}, template={self.template.name!r}, max_length={self.builder.max_length})"

    def _value_kind(self) -> str:
        """What to ask the engine for: the first of its label kinds that the recipe's score can use."""
        have = label_kinds(self.engine)
        for kind in have:
            if kind in self.rule.accepts:
                return kind
        need = " or ".join(f"label {k}" for k in self.rule.accepts)
        hint = getattr(self.engine, "raw_logits_hint", "") if "logits" in self.rule.accepts else ""
        raise ValueError(f"recipe {self.template.name!r} scores a {self.rule.kind!r} score, which needs {need}; "
                         f"{type(self.engine).__name__} gives only label {' and '.join(have)}"
                         + (f". {hint}" if hint else ""))

    def _check_takes_instruction(self) -> None:
        if not self.template.takes_instruction:
            raise ValueError(f"template {self.template.name!r} takes no instruction; use a recipe that does, such as "
                             "'lb-reranker-v1-instruct', 'qwen3-reranker', 'mxbai-rerank-v2' or 'bge-reranker-v2-gemma'")

    # -- sync API ----------------------------------------------------------------------------

    def score(self, pairs: Iterable[Sequence[str]]) -> np.ndarray:
        """Scores of (query, document) pairs, in input order. Raises ScoringError if any failed."""
        return _checked(self.score_details(pairs)).score

    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        """Scores of ``documents`` for ``query``, in input order (empty for no documents).

        ``instruction`` replaces the Reranker's for this call (recipes that take one).
        """
        pairs = query_pairs(query, documents)
        return _checked(self.score_details(pairs, self._one_instruction(instruction, len(pairs)))).score

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None,
             return_documents: bool = False, *, instruction: str | None = None) -> list[dict[str, Any]]:
        """``[{"corpus_id", "score"(, "text")}]`` best first, like sentence-transformers' CrossEncoder.rank."""
        _check_top_k(top_k)
        return _ranking(self.rerank(query, documents, instruction=instruction), documents, top_k, return_documents)

    def score_details(self, pairs: Iterable[Sequence[str]], instructions: Sequence[str | None] | None = None, *,
                      long_documents: LongDocuments | None = None,
                      max_document_tokens: int | None = None) -> ScoredPairs:
        """Scores, label mass, truncation and per-pair errors, in input order; never raises for one pair.

        Pairs go through in chunks of ``chunk_size``; the next chunk's prompts are built while the
        engine scores the current one (a remote engine gets several chunks at once, see
        ``score_stream``). ``max_document_tokens`` cuts each document to that many
        tokens first (Cohere's ``max_tokens_per_doc``).
        """
        queries, documents = split_pairs(pairs)
        instructions = self._instructions(instructions, len(queries))
        options = self._options(long_documents, max_document_tokens)
        spans = [slice(start, start + self.chunk_size) for start in range(0, len(queries), self.chunk_size)]
        parts = []

        def build(span: slice) -> Prompts:
            return self.builder.build(queries[span], documents[span], instructions[span], **options)

        with tqdm(total=len(queries), unit="pair", disable=not self.show_progress) as bar:
            for pairs, result in self.score_stream((p.pairs, p) for p in prefetch(build, spans)):
                parts.append(result)
                bar.update(pairs)
        return _concat(parts) if parts else self.score_logprobs(self.builder.build([], []), _no_logprobs(self))

    def prepare(self, pairs: Iterable[Sequence[str]], instructions: Sequence[str | None] | None = None, *,
                long_documents: LongDocuments | None = None, max_document_tokens: int | None = None) -> Prompts:
        """Validate pairs and render their prompts (fitted to ``max_length``) for ``score_prompts``."""
        queries, documents = split_pairs(pairs)
        return self.builder.build(queries, documents, self._instructions(instructions, len(queries)),
                                  **self._options(long_documents, max_document_tokens))

    def score_prompts(self, prompts: Prompts) -> ScoredPairs:
        """Run built prompts through the engine and score them, in their order."""
        return self.score_logprobs(prompts, self.label_logprobs(prompts))

    def label_logprobs(self, prompts: Prompts) -> LabelLogprobs:
        """The engine's label log-probabilities for built prompts (one engine call at a time if it needs)."""
        if not len(prompts):
            return _no_logprobs(self)
        with self._engine_lock:
            return self.engine.label_logprobs(prompts, self.labels)

    def score_logprobs(self, prompts: Prompts, out: LabelLogprobs) -> ScoredPairs:
        """Scores of the pairs of ``prompts`` from the engine's answer for them.

        A pair whose document was split into windows gets its best window's score and label mass;
        it fails if any of its windows failed.
        """
        values, failed = out.values, list(out.errors)
        if failed:
            values = values.copy()
            values[failed] = 0.0  # placeholder rows, replaced by NaN below
        scores = self.rule.scores(values, out.kind)
        score, mass, errors = scores.score, scores.label_mass, {**scores.errors, **out.errors}
        failed = list(errors)
        score[failed] = np.nan
        mass[failed] = np.nan
        altered = prompts.altered.copy() if prompts.altered is not None else np.zeros(len(prompts), dtype=bool)
        altered[list(out.altered)] = True
        truncated, windows = prompts.truncated, None
        if prompts.pair_index is not None:
            score, mass, truncated, altered, errors, windows = _best_windows(prompts.pair_index, score, mass,
                                                                             truncated, altered, errors)
        return ScoredPairs(score, mass, truncated, errors, scores.zero_mass, self.rule.relevance_of(score), altered,
                           windows)

    def score_stream(self, items: Iterable[tuple[T, Prompts | None]]) -> Iterator[tuple[T, ScoredPairs | None]]:
        """``(key, scores)`` for each ``(key, prompts)``, in order; None passes through as None.

        An engine that takes several calls at once (a remote server) gets up to
        ``max_calls_in_flight`` of them, so one slow pair does not hold up the next chunks.
        """
        if self._calls_in_flight == 1:
            for key, prompts in items:
                yield key, None if prompts is None else self.score_prompts(prompts)
            return
        with ThreadPoolExecutor(self._calls_in_flight, thread_name_prefix="genrank-call") as pool:
            pending: deque[tuple[T, Future[ScoredPairs] | None]] = deque()
            try:
                for key, prompts in items:
                    pending.append((key, None if prompts is None else pool.submit(self.score_prompts, prompts)))
                    while len(pending) > self._calls_in_flight or (pending and _done(pending[0][1])):
                        key, future = pending.popleft()
                        yield key, None if future is None else future.result()
                while pending:
                    key, future = pending.popleft()
                    yield key, None if future is None else future.result()
            finally:
                for _, future in pending:
                    if future is not None:
                        future.cancel()

    # -- async API ---------------------------------------------------------------------------

    async def ascore(self, pairs: Iterable[Sequence[str]]) -> np.ndarray:
        """``score`` for async code."""
        return _checked(await self.ascore_details(pairs)).score

    async def arerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        """``rerank`` for async code."""
        pairs = query_pairs(query, documents)
        return _checked(await self.ascore_details(pairs, self._one_instruction(instruction, len(pairs)))).score

    async def arank(self, query: str, documents: Sequence[str], top_k: int | None = None,
                    return_documents: bool = False, *, instruction: str | None = None) -> list[dict[str, Any]]:
        """``rank`` for async code."""
        _check_top_k(top_k)
        return _ranking(await self.arerank(query, documents, instruction=instruction), documents, top_k,
                        return_documents)

    async def ascore_details(self, pairs: Iterable[Sequence[str]], instructions: Sequence[str | None] | None = None,
                             *, long_documents: LongDocuments | None = None,
                             max_document_tokens: int | None = None) -> ScoredPairs:
        """``score_details`` for async code: prompts are built on a worker thread, then scored by
        ``ascore_prompts`` one chunk at a time."""
        queries, documents = split_pairs(pairs)
        instructions = self._instructions(instructions, len(queries))
        options = self._options(long_documents, max_document_tokens)
        parts = []
        for start in range(0, len(queries), self.chunk_size):
            span = slice(start, start + self.chunk_size)
            prompts = await asyncio.to_thread(self.builder.build, queries[span], documents[span], instructions[span],
                                              **options)
            parts.append(await self.ascore_prompts(prompts))
        return _concat(parts) if parts else self.score_logprobs(self.builder.build([], []), _no_logprobs(self))

    async def ascore_prompts(self, prompts: Prompts) -> ScoredPairs:
        """``score_prompts`` for async code."""
        return self.score_logprobs(prompts, await self.alabel_logprobs(prompts))

    async def alabel_logprobs(self, prompts: Prompts) -> LabelLogprobs:
        """``label_logprobs`` for async code: natively on this event loop when the engine can
        (cancelling the caller drops its pending requests), else on a worker thread."""
        if not len(prompts):
            return _no_logprobs(self)
        native = getattr(self.engine, "alabel_logprobs", None)
        if native is not None:
            return await native(prompts, self.labels)
        return await asyncio.get_running_loop().run_in_executor(self._engine_thread, self.label_logprobs, prompts)

    # -- helpers -----------------------------------------------------------------------------

    def _options(self, long_documents: LongDocuments | None, max_document_tokens: int | None) -> dict[str, Any]:
        long_documents = long_documents or self.long_documents
        if long_documents not in LONG_DOCUMENTS:
            raise ValueError(f"long_documents must be one of {LONG_DOCUMENTS}, got {long_documents!r}")
        return {"long_documents": long_documents, "max_document_tokens": max_document_tokens}

    def _one_instruction(self, instruction: str | None, n: int) -> list[str | None] | None:
        """``instruction`` for each of ``n`` pairs (None: the Reranker's own), checked."""
        if instruction is None:
            return None
        self._check_takes_instruction()
        return [check_text(instruction, "instruction")] * n

    def _instructions(self, instructions: Sequence[str | None] | None, n: int) -> list[str | None]:
        """One instruction per pair: the given ones, checked, or the Reranker's for every pair."""
        if instructions is None:
            return [self.instruction] * n
        if isinstance(instructions, str):
            raise ValueError("instructions must be a list with one instruction per pair, got a single string")
        instructions = list(instructions)
        if len(instructions) != n:
            raise ValueError(f"instructions has {len(instructions)} items for {n} pairs")
        if any(i is not None for i in instructions):
            self._check_takes_instruction()
        return [i if i is None else check_text(i, f"instructions[{n}]") for n, i in enumerate(instructions)]


def _recipe(template: str | Path | Template | None, model: str | None) -> Template:
    """The recipe asked for, else the one whose models name ``model``, else the default (logged)."""
    if template is not None:
        return load_template(template)
    found = template_for_model(model)
    if found is not None:
        log.info("model %r: using recipe %r (its models list names it)", model, found.name)
        return found
    if model is not None:
        log.info("no shipped recipe names model %r; using the default recipe %r (pass template=... to choose)",
                 model, DEFAULT_TEMPLATE)
    return load_template(DEFAULT_TEMPLATE)


def prefetch(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``fn(item)`` for each item in order, computing the next one in a thread meanwhile.

    Prompt building (tokenization, which releases the GIL) then overlaps the engine's work on the
    previous chunk; one result is held ahead, so memory stays bounded.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrank-prefetch") as pool:
        ahead: Future[R] | None = None
        for item in items:
            future = pool.submit(fn, item)
            if ahead is not None:
                yield ahead.result()
            ahead = future
        if ahead is not None:
            yield ahead.result()


def _done(future: Future | None) -> bool:
    return future is None or future.done()


def _checked(result: ScoredPairs) -> ScoredPairs:
    if result.errors:
        raise ScoringError(result)
    return result


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")


def _ranking(scores: np.ndarray, documents: Sequence[str], top_k: int | None,
             return_documents: bool) -> list[dict[str, Any]]:
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [{"corpus_id": int(i), "score": float(scores[i]), **({"text": documents[i]} if return_documents else {})}
            for i in order]


def _no_logprobs(reranker: Reranker) -> LabelLogprobs:
    return LabelLogprobs(np.zeros((0, len(reranker.template.labels))), kind=reranker.labels.kind)


def _best_windows(pair_index: np.ndarray, score: np.ndarray, mass: np.ndarray, truncated: np.ndarray,
                  altered: np.ndarray, errors: dict[int, str]):
    """Per-pair values from per-window ones: the best window's score and mass; any failed window fails the pair."""
    n = int(pair_index[-1]) + 1
    ranked = np.where(np.isnan(score), -np.inf, score)
    order = np.lexsort((-ranked, pair_index))  # by pair, best window first
    first = order[np.searchsorted(pair_index[order], np.arange(n))]
    best_score, best_mass = score[first].copy(), mass[first].copy()
    pair_errors: dict[int, str] = {}
    for i, why in sorted(errors.items()):
        pair_errors.setdefault(int(pair_index[i]), f"a window of the document failed: {why}")
    failed = list(pair_errors)
    best_score[failed] = np.nan
    best_mass[failed] = np.nan
    windows = np.bincount(pair_index, minlength=n)
    return (best_score, best_mass, np.bincount(pair_index, truncated, minlength=n) > 0,
            np.bincount(pair_index, altered, minlength=n) > 0, pair_errors, windows)


def _concat(parts: list[ScoredPairs]) -> ScoredPairs:
    if len(parts) == 1:
        return parts[0]
    errors, offset = {}, 0
    for p in parts:
        errors.update({offset + i: why for i, why in p.errors.items()})
        offset += len(p.score)
    windows = None
    if any(p.windows is not None for p in parts):
        windows = np.concatenate([p.windows if p.windows is not None else np.ones(len(p), dtype=np.int64)
                                  for p in parts])
    return ScoredPairs(np.concatenate([p.score for p in parts]), np.concatenate([p.label_mass for p in parts]),
                       np.concatenate([p.truncated for p in parts]), errors, sum(p.zero_mass for p in parts),
                       np.concatenate([p.relevance for p in parts]), np.concatenate([p.altered for p in parts]),
                       windows)

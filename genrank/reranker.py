"""The Reranker: pairs -> prompts -> engine -> label log-probabilities -> scores."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from .calibration import Calibration, fitted_for, load_calibration, score_settings
from .engines import Engine, LabelLogprobs, make_engine
from .errors import GenrankError, InputError
from .pieces import PieceBuilder, prompt_builder
from .prompts import LongDocuments, PromptBuilder, Prompts
from .scorer import ValueKind, best_first, warn_zero_mass
from .templates import DEFAULT_TEMPLATE, Template, load_template, template_for_model
from .validation import check_long_documents, check_text, check_top_k, query_pairs, split_pairs

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
    services report. ``label_mass`` is NaN where the engine returned raw logits (and is then not
    counted in ``zero_mass``). ``probability`` is P(relevant) from the Reranker's calibration
    (None without one).
    """

    score: np.ndarray  # (N,) float64
    label_mass: np.ndarray  # (N,) probability the model put on the labels, before renormalising
    truncated: np.ndarray  # (N,) bool: query or document cut to fit max_length
    errors: dict[int, str] = field(default_factory=dict)
    zero_mass: int = 0  # pairs with no probability on any label (scored with the lowest label value)
    relevance: np.ndarray | None = None  # (N,) float64 on [0, 1]
    altered: np.ndarray | None = None  # (N,) bool: special-token text in the content was neutralised
    windows: np.ndarray | None = None  # (N,) int: prompts per pair (long_documents="chunks")
    probability: np.ndarray | None = None  # (N,) float64: calibrated P(relevant), with a calibration

    def __len__(self) -> int:
        return len(self.score)


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
    each window of it and keeps the best window's score. ``calibration`` (a ``CALIB.json`` from
    ``genrank calibrate``) adds P(relevant) to every result; one fitted for another recipe or other
    score settings is refused, and one fitted for another model unless ``allow_other_model``.

    Every method has an async twin (``arank``, ``arerank``, ``ascore``, ``ascore_details``): a
    remote engine runs on the caller's event loop, an in-process one on a worker thread, one call
    at a time.

    ``close()`` (or ``with Reranker(...) as rr:``; ``aclose()``, ``async with``) shuts the
    Reranker's worker thread and closes the engine if the Reranker made it from a name; an engine
    instance passed in stays open for its owner to close. Closing is final.
    """

    def __init__(self, model: str | None = None, *, engine: str | Engine = "auto",
                 template: str | Path | Template | None = None, max_length: int | None = None,
                 normalize: bool | None = None, instruction: str | None = None,
                 long_documents: LongDocuments = "truncate", chunk_size: int = 4096, show_progress: bool = False,
                 calibration: str | Path | Calibration | None = None, allow_other_model: bool = False,
                 **engine_options: Any):
        named = model or (engine.model_name if isinstance(engine, Engine) else None)
        self.template = _recipe(template, named)
        calibration = None if calibration is None else load_calibration(calibration)  # before the model loads
        if instruction is not None:
            self.check_instruction(instruction)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        check_long_documents(long_documents)
        if calibration is not None:  # a calibration for other settings is refused before the model loads
            # (the max length as the builder will take it; a recipe fitted to the model's positions may lower it)
            calibration.check_settings(score_settings(
                self.template, instruction=instruction, long_documents=long_documents,
                max_length=max_length if max_length is not None else (self.template.max_length or 1024),
                normalize=self.template.normalize if normalize is None else normalize))
        model = model or (None if named else self.template.default_model)
        self.engine = make_engine(engine, model, raw_logits=self.template.score.accepts == ("logits",),
                                  **engine_options)
        self._owns_engine = isinstance(engine, str)  # made here: closed here
        self._closed, self._closing = False, threading.Lock()
        try:
            self.rule = self.template.score_rule(self.engine.model_name or model, normalize)
            kind = self._value_kind()  # before the prompts: a setup error every request would share
            try:
                self.builder = prompt_builder(self.template, self.engine.tokenizer, max_length,
                                              self.engine.prompt_format, self.engine.max_positions)
            except ValueError as e:  # its checks of max_length and of the template against the tokenizer
                raise e if isinstance(e, GenrankError) else InputError(str(e)) from e
            if self.engine.prompt_format == "tokens" and self.builder.labels.token_ids is None:
                raise InputError(f"engine {type(self.engine).__name__} needs a tokenizer")
            if long_documents == "chunks" and self.engine.tokenizer is None:
                raise InputError("long_documents='chunks' needs the model's tokenizer (pass tokenizer=... to the engine)")
            if long_documents == "chunks" and isinstance(self.builder, PieceBuilder):
                raise InputError(f"long_documents='chunks' is not available with recipe {self.template.name!r}, "
                                 "whose authors' code cuts long documents; use long_documents='truncate'")
            self.labels = replace(self.builder.labels, kind=kind)
            calls = self.engine.max_calls_in_flight
            if not isinstance(calls, int) or isinstance(calls, bool) or calls < 1:
                raise InputError(f"engine {type(self.engine).__name__}'s max_calls_in_flight must be a positive "
                                 f"integer, got {calls!r}")
        except BaseException:
            if self._owns_engine:
                self.engine.close()
            raise
        self.normalize = self.rule.normalize
        self.instruction = instruction
        self.long_documents = long_documents
        self.chunk_size = chunk_size
        self.show_progress = show_progress
        if calibration is not None:
            try:
                calibration.check_model(fitted_for(self)["model"], allow_other_model=allow_other_model)
            except BaseException:
                if self._owns_engine:
                    self.engine.close()
                raise
        self.calibration: Calibration | None = calibration
        self._calls_in_flight = calls
        # An engine that cannot take concurrent calls gets one at a time, from any thread; async callers
        # queue on the Reranker's own engine thread (a cancelled caller's call is dropped), not on the
        # event loop's default executor, whose threads the application needs for other work.
        self._engine_thread = _EngineThread() if calls == 1 else None
        self._engine_lock: AbstractContextManager = self._engine_thread.lock if calls == 1 else nullcontext()

    def __repr__(self) -> str:
        return f"Reranker(engine={self.engine!r}, template={self.template.name!r}, max_length={self.builder.max_length})"

    def _value_kind(self) -> ValueKind:
        """What to ask the engine for: the first of its label kinds that the recipe's score can use."""
        have = self.engine.label_kinds
        for kind in have:
            if kind in self.rule.accepts:
                return kind
        need = " or ".join(f"label {k}" for k in self.rule.accepts)
        hint = self.engine.raw_logits_hint if "logits" in self.rule.accepts else ""
        raise InputError(f"recipe {self.template.name!r} scores a {self.rule.kind!r} score, which needs {need}; "
                         f"{type(self.engine).__name__} gives only label {' and '.join(have)}"
                         + (f". {hint}" if hint else ""))

    def check_instruction(self, instruction: Any) -> str:
        """``instruction`` if it is a string and this Reranker's recipe takes one, else an InputError."""
        self._check_takes_instruction()
        return check_text(instruction, "instruction")

    def instruction_per_pair(self, instruction: str | None, n: int) -> list[str] | None:
        """``instruction``, checked, for each of ``n`` pairs (``score_details``' ``instructions``); None: the
        Reranker's own."""
        return None if instruction is None else [self.check_instruction(instruction)] * n

    def _check_takes_instruction(self) -> None:
        if not self.template.takes_instruction:
            raise InputError(f"template {self.template.name!r} takes no instruction; use a recipe that does, such as "
                             "'lb-reranker-v1-instruct', 'qwen3-reranker', 'mxbai-rerank-v2' or 'bge-reranker-v2-gemma'")

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the worker thread (after the call it runs) and close the engine if this Reranker made it.

        Final: scoring afterwards raises RuntimeError; closing again does nothing.
        """
        if self._close_thread() and self._owns_engine:
            self.engine.close()

    async def aclose(self) -> None:
        """``close`` for async code (the engine's ``aclose``, the thread shut off the event loop)."""
        if await asyncio.to_thread(self._close_thread) and self._owns_engine:
            await self.engine.aclose()

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Reranker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _close_thread(self) -> bool:
        """Mark the Reranker closed and shut its engine thread; False if it was closed already."""
        with self._closing:
            if self._closed:
                return False
            self._closed = True
        if self._engine_thread is not None:
            self._engine_thread.shutdown(wait=True, cancel_futures=True)
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Reranker is closed; make a new one")

    # -- sync API ----------------------------------------------------------------------------

    def score(self, pairs: Iterable[Sequence[str]]) -> np.ndarray:
        """Scores of (query, document) pairs, in input order. Raises ScoringError if any failed."""
        return _checked(self.score_details(pairs)).score

    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        """Scores of ``documents`` for ``query``, in input order (empty for no documents).

        ``instruction`` replaces the Reranker's for this call (recipes that take one).
        """
        pairs = query_pairs(query, documents)
        return _checked(self.score_details(pairs, self.instruction_per_pair(instruction, len(pairs)))).score

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None,
             return_documents: bool = False, *, min_relevance: float | None = None,
             min_probability: float | None = None, instruction: str | None = None) -> list[dict[str, Any]]:
        """``[{"corpus_id", "score"(, "probability")(, "text")}]`` best first, like sentence-transformers'
        CrossEncoder.rank; ``probability`` with a calibration. Candidates whose relevance is below
        ``min_relevance``, or (with a calibration) whose probability is below ``min_probability``, are dropped.
        ``instruction`` replaces the Reranker's for this call (recipes that take one)."""
        check_top_k(top_k)
        floors = self._floors(min_relevance, min_probability)
        pairs = query_pairs(query, documents)
        return _ranking(_checked(self.score_details(pairs, self.instruction_per_pair(instruction, len(pairs)))),
                        documents, top_k, return_documents, floors)

    def score_details(self, pairs: Iterable[Sequence[str]], instructions: Sequence[str | None] | None = None, *,
                      long_documents: LongDocuments | None = None,
                      max_document_tokens: int | None = None) -> ScoredPairs:
        """Scores, label mass, truncation and per-pair errors, in input order; never raises for one pair.

        Pairs go through in chunks of ``chunk_size``; the next chunk's prompts are built while the
        engine scores the current one (a remote engine gets several chunks at once, see
        ``score_stream``). ``max_document_tokens`` cuts each document to that many
        tokens first (Cohere's ``max_tokens_per_doc``).
        """
        chunks = self._chunks(pairs, instructions, long_documents, max_document_tokens)
        parts = []
        with tqdm(total=chunks.pairs, unit="pair", disable=not self.show_progress) as bar:
            for pairs, result in self.score_stream((p.pairs, p) for p in prefetch(chunks.build, chunks.spans)):
                parts.append(result)
                bar.update(pairs)
        return concat_scored(parts) if parts else self.score_logprobs(self.builder.build([], []), _no_logprobs(self))

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
        self._check_open()
        if not len(prompts):
            return _no_logprobs(self)
        with self._engine_lock:
            return self.engine.label_logprobs(prompts, self.labels)

    def score_logprobs(self, prompts: Prompts, out: LabelLogprobs) -> ScoredPairs:
        """Scores of the pairs of ``prompts`` from the engine's answer for them.

        A pair whose document was split into windows gets its best window's score and label mass;
        it fails if any of its windows failed. ``zero_mass`` counts pairs whose (best window's)
        label mass is zero.
        """
        values, failed = out.values, list(out.errors)
        if failed:
            values = values.copy()
            values[failed] = 0.0  # placeholder rows, replaced by NaN below
        scores = self.rule.scores(values, out.kind, warn=False)
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
        zero_mass = int(np.count_nonzero(mass == 0))  # NaN (failed) is not zero
        if zero_mass:
            warn_zero_mass(zero_mass, len(score), min(self.rule.values) if self.normalize else 0.0)
        return ScoredPairs(score, mass, truncated, errors, zero_mass,
                           self.rule.relevance_of(score), altered, windows,
                           None if self.calibration is None else self.calibration.probability(score))

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
        return _checked(await self.ascore_details(pairs, self.instruction_per_pair(instruction, len(pairs)))).score

    async def arank(self, query: str, documents: Sequence[str], top_k: int | None = None,
                    return_documents: bool = False, *, min_relevance: float | None = None,
                    min_probability: float | None = None, instruction: str | None = None) -> list[dict[str, Any]]:
        """``rank`` for async code."""
        check_top_k(top_k)
        floors = self._floors(min_relevance, min_probability)
        pairs = query_pairs(query, documents)
        scored = await self.ascore_details(pairs, self.instruction_per_pair(instruction, len(pairs)))
        return _ranking(_checked(scored), documents, top_k, return_documents, floors)

    async def ascore_details(self, pairs: Iterable[Sequence[str]], instructions: Sequence[str | None] | None = None,
                             *, long_documents: LongDocuments | None = None,
                             max_document_tokens: int | None = None) -> ScoredPairs:
        """``score_details`` for async code, with the same chunks: the next chunk's prompts are built on
        a worker thread while the engine scores up to ``max_calls_in_flight`` chunks (one for an
        in-process engine). Cancelling the caller cancels the chunks in flight."""
        chunks = self._chunks(pairs, instructions, long_documents, max_document_tokens)
        parts: list[ScoredPairs] = []
        pending: deque[asyncio.Task[ScoredPairs]] = deque()
        try:
            for span in chunks.spans:
                prompts = await asyncio.to_thread(chunks.build, span)
                while len(pending) >= self._calls_in_flight:
                    parts.append(await pending.popleft())
                pending.append(asyncio.ensure_future(self.ascore_prompts(prompts)))
            while pending:
                parts.append(await pending.popleft())
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return concat_scored(parts) if parts else self.score_logprobs(self.builder.build([], []), _no_logprobs(self))

    async def ascore_prompts(self, prompts: Prompts) -> ScoredPairs:
        """``score_prompts`` for async code."""
        return self.score_logprobs(prompts, await self.alabel_logprobs(prompts))

    async def alabel_logprobs(self, prompts: Prompts) -> LabelLogprobs:
        """``label_logprobs`` for async code: natively on this event loop when the engine can
        (cancelling the caller drops its pending requests), else on the Reranker's engine thread
        (one call at a time) or, for an engine that takes several, the loop's default executor."""
        self._check_open()
        if not len(prompts):
            return _no_logprobs(self)
        return await self.engine.alabel_logprobs(prompts, self.labels, executor=self._engine_thread)

    # -- helpers -----------------------------------------------------------------------------

    def _chunks(self, pairs: Iterable[Sequence[str]], instructions: Sequence[str | None] | None,
                long_documents: LongDocuments | None, max_document_tokens: int | None) -> _Chunks:
        """The checked pairs of a ``score_details`` call, in chunks of ``chunk_size``."""
        queries, documents = split_pairs(pairs)
        return _Chunks(self.builder, queries, documents, self._instructions(instructions, len(queries)),
                       self._options(long_documents, max_document_tokens), self.chunk_size)

    def _floors(self, min_relevance: float | None, min_probability: float | None) -> dict[str, float]:
        """The checked thresholds of ``rank``: ScoredPairs field -> lowest value kept."""
        if min_probability is not None and self.calibration is None:
            raise InputError("min_probability needs a calibration: Reranker(..., calibration='CALIB.json') "
                             "(see genrank calibrate); min_relevance works without one")
        floors = {"relevance": min_relevance, "probability": min_probability}
        for name, value in floors.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 1):
                raise InputError(f"min_{name} must be a number from 0 to 1, got {value!r}")
        return {name: float(value) for name, value in floors.items() if value is not None}

    def _options(self, long_documents: LongDocuments | None, max_document_tokens: int | None) -> dict[str, Any]:
        return {"long_documents": check_long_documents(long_documents or self.long_documents),
                "max_document_tokens": max_document_tokens}


    def _instructions(self, instructions: Sequence[str | None] | None, n: int) -> list[str | None]:
        """One instruction per pair: the given ones, checked, or the Reranker's for every pair."""
        if instructions is None:
            return [self.instruction] * n
        if isinstance(instructions, str):
            raise InputError("instructions must be a list with one instruction per pair, got a single string")
        instructions = list(instructions)
        if len(instructions) != n:
            raise InputError(f"instructions has {len(instructions)} items for {n} pairs")
        if any(i is not None for i in instructions):
            self._check_takes_instruction()
        return [i if i is None else check_text(i, f"instructions[{n}]") for n, i in enumerate(instructions)]


@dataclass(frozen=True)
class _Chunks:
    """The chunk plan both ``score_details`` and ``ascore_details`` follow: spans of ``size`` pairs and their prompts."""

    builder: PromptBuilder
    queries: list[str]
    documents: list[str]
    instructions: list[str | None]
    options: dict[str, Any]
    size: int

    @property
    def pairs(self) -> int:
        return len(self.queries)

    @property
    def spans(self) -> list[slice]:
        return [slice(start, start + self.size) for start in range(0, len(self.queries), self.size)]

    def build(self, span: slice) -> Prompts:
        """The prompts of the pairs in ``span``."""
        return self.builder.build(self.queries[span], self.documents[span], self.instructions[span], **self.options)


class _EngineThread(ThreadPoolExecutor):
    """One worker thread whose calls hold ``lock``, which sync callers hold too: one engine call at a time."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="genrank-engine")
        self.lock = threading.Lock()

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(_holding, self.lock, fn, *args, **kwargs)


def _holding(lock: threading.Lock, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    with lock:
        return fn(*args, **kwargs)


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


def _ranking(scored: ScoredPairs, documents: Sequence[str], top_k: int | None, return_documents: bool,
             floors: dict[str, float] | None = None) -> list[dict[str, Any]]:
    keep = np.ones(len(scored), dtype=bool)
    for name, floor in (floors or {}).items():
        keep &= getattr(scored, name) >= floor
    order = [i for i in best_first(scored.score) if keep[i]][:top_k]
    probability = scored.probability
    return [{"corpus_id": int(i), "score": float(scored.score[i]),
             **({"probability": float(probability[i])} if probability is not None else {}),
             **({"text": documents[i]} if return_documents else {})}
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


def concat_scored(parts: Sequence[ScoredPairs]) -> ScoredPairs:
    """The outcomes of consecutive batches of pairs as one, in order (pair indices of errors renumbered)."""
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
    probability = None if parts[0].probability is None else np.concatenate([p.probability for p in parts])
    return ScoredPairs(np.concatenate([p.score for p in parts]), np.concatenate([p.label_mass for p in parts]),
                       np.concatenate([p.truncated for p in parts]), errors, sum(p.zero_mass for p in parts),
                       np.concatenate([p.relevance for p in parts]), np.concatenate([p.altered for p in parts]),
                       windows, probability)

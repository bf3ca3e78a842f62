"""The Reranker: pairs -> prompts -> engine -> label log-probabilities -> scores."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from .engines import Engine, make_engine
from .prompts import PromptBuilder, Prompts
from .scorer import expected_scores
from .templates import DEFAULT_TEMPLATE, Template, load_template

T = TypeVar("T")
R = TypeVar("R")


class ScoringError(RuntimeError):
    """Some pairs could not be scored; ``result`` holds every pair's outcome."""

    def __init__(self, result: ScoredPairs):
        self.result = result
        first = sorted(result.errors.items())[:3]
        shown = "; ".join(f"pair {i}: {why}" for i, why in first)
        super().__init__(f"{len(result.errors)} of {len(result.score)} pairs could not be scored ({shown})")


@dataclass
class ScoredPairs:
    """Per-pair outcome, in input order. Failed pairs have NaN score and an entry in ``errors``."""

    score: np.ndarray  # (N,) float64
    label_mass: np.ndarray  # (N,) probability the model put on the labels, before renormalising
    truncated: np.ndarray  # (N,) bool: query or document cut to fit max_length
    errors: dict[int, str] = field(default_factory=dict)
    zero_mass: int = 0  # pairs with no probability on any label (scored with the lowest label value)


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
    if not queries:
        raise ValueError("pairs is empty")
    return queries, documents


class Reranker:
    """Score (query, document) pairs with a causal LM's first-token label probabilities.

    >>> rr = Reranker("lightblue/lb-reranker-0.5B-v1.0", engine="hf")
    >>> rr.rank("Who wrote 'To Kill a Mockingbird'?", docs, top_k=3, return_documents=True)

    ``engine`` is ``"auto"`` (vLLM when installed with a GPU, else transformers), ``"hf"``,
    ``"vllm"``, ``"lmdeploy"``, ``"openai"`` or an Engine instance; other keyword arguments go to
    the engine's constructor. ``normalize=False`` uses the lb-reranker card's formula (label
    probabilities not renormalised) to reproduce published numbers.
    """

    def __init__(self, model: str | None = None, *, engine: str | Engine = "auto",
                 template: str | Path | Template = DEFAULT_TEMPLATE, max_length: int = 1024,
                 normalize: bool | None = None, instruction: str | None = None,
                 chunk_size: int = 4096, show_progress: bool = False, **engine_options: Any):
        self.template = load_template(template)
        if instruction is not None and not self.template.takes_instruction:
            raise ValueError(f"template {self.template.name!r} takes no instruction; "
                             "use an instruction-aware template such as 'lb-reranker-v1-instruct'")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.engine = make_engine(engine, model or self.template.default_model, **engine_options)
        self.builder = PromptBuilder(self.template, self.engine.tokenizer, max_length)
        if self.engine.prompt_format == "tokens" and self.builder.labels.token_ids is None:
            raise ValueError(f"engine {type(self.engine).__name__} needs a tokenizer")
        self.normalize = self.template.normalize if normalize is None else normalize
        self.instruction = instruction
        self.chunk_size = chunk_size
        self.show_progress = show_progress

    def __repr__(self) -> str:
        return f"Reranker(engine={self.engine!r}, template={self.template.name!r}, max_length={self.builder.max_length})"

    def score(self, pairs: Iterable[Sequence[str]]) -> np.ndarray:
        """Scores of (query, document) pairs, in input order. Raises ScoringError if any failed."""
        result = self.score_details(pairs)
        if result.errors:
            raise ScoringError(result)
        return result.score

    def rerank(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Scores of ``documents`` for ``query``, in input order."""
        check_text(query, "query", allow_empty=False)
        if isinstance(documents, str):
            raise ValueError("documents must be a list of strings, got a single string")
        if not documents:
            raise ValueError("documents is empty")
        return self.score([(query, d) for d in documents])

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None,
             return_documents: bool = False) -> list[dict[str, Any]]:
        """``[{"corpus_id", "score"(, "text")}]`` best first, like sentence-transformers' CrossEncoder.rank."""
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        scores = self.rerank(query, documents)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [{"corpus_id": int(i), "score": float(scores[i]), **({"text": documents[i]} if return_documents else {})}
                for i in order]

    def score_details(self, pairs: Iterable[Sequence[str]], instructions: Sequence[str | None] | None = None) -> ScoredPairs:
        """Scores, label mass, truncation and per-pair errors, in input order; never raises for one pair.

        Pairs go through in chunks of ``chunk_size``; the next chunk's prompts are built while the
        engine scores the current one.
        """
        queries, documents = split_pairs(pairs)
        instructions = self._instructions(instructions, len(queries))
        spans = [slice(start, start + self.chunk_size) for start in range(0, len(queries), self.chunk_size)]
        parts = []
        with tqdm(total=len(queries), unit="pair", disable=not self.show_progress) as bar:
            for prompts in prefetch(lambda s: self.builder.build(queries[s], documents[s], instructions[s]), spans):
                parts.append(self.score_prompts(prompts))
                bar.update(len(prompts))
        return _concat(parts)

    def prepare(self, pairs: Iterable[Sequence[str]], instructions: Sequence[str | None] | None = None) -> Prompts:
        """Validate pairs and render their prompts (truncated to ``max_length``) for ``score_prompts``."""
        queries, documents = split_pairs(pairs)
        return self.builder.build(queries, documents, self._instructions(instructions, len(queries)))

    def _instructions(self, instructions: Sequence[str | None] | None, n: int) -> list[str | None]:
        """One instruction per pair: the given ones, checked, or the Reranker's for every pair."""
        if instructions is None:
            return [self.instruction] * n
        if isinstance(instructions, str):
            raise ValueError("instructions must be a list with one instruction per pair, got a single string")
        instructions = list(instructions)
        if len(instructions) != n:
            raise ValueError(f"instructions has {len(instructions)} items for {n} pairs")
        if any(i is not None for i in instructions) and not self.template.takes_instruction:
            raise ValueError(f"template {self.template.name!r} takes no instruction")
        return [i if i is None else check_text(i, f"instructions[{n}]") for n, i in enumerate(instructions)]

    def score_prompts(self, prompts: Prompts) -> ScoredPairs:
        """Run built prompts through the engine and score them, in their order."""
        out = self.engine.label_logprobs(prompts, self.builder.labels)
        values, failed = out.values, list(out.errors)
        if failed:
            values = values.copy()
            values[failed] = 0.0  # placeholder rows, replaced by NaN below
        scores = expected_scores(values, self.template.values, normalize=self.normalize)
        scores.score[failed] = np.nan
        scores.label_mass[failed] = np.nan
        return ScoredPairs(scores.score, scores.label_mass, prompts.truncated, dict(out.errors), scores.zero_mass)


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


def _concat(parts: list[ScoredPairs]) -> ScoredPairs:
    if len(parts) == 1:
        return parts[0]
    errors, offset = {}, 0
    for p in parts:
        errors.update({offset + i: why for i, why in p.errors.items()})
        offset += len(p.score)
    return ScoredPairs(np.concatenate([p.score for p in parts]), np.concatenate([p.label_mass for p in parts]),
                       np.concatenate([p.truncated for p in parts]), errors, sum(p.zero_mass for p in parts))

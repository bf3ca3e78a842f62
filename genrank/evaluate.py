"""BEIR-style reranking evaluation: first stage (a TREC run or BM25), rerank the top k, trec_eval metrics.

Both rows of the table are computed on the same top-k candidates per query, so Recall@100 is the
first stage's ceiling and reranking changes only the order. Documents are ``(title + " " +
text).strip()``, as BEIR's own rerankers build them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

# query id -> [(doc id, score)], best first
Ranking = dict[str, list[tuple[str, float]]]

# trec_eval measure (as pytrec_eval names its results) -> column name. ndcg_cut is linear-gain
# nDCG, as BEIR reports; success_3 is the mxbai card's Accuracy@3 (a relevant document in the top 3).
METRICS = {"ndcg_cut_1": "NDCG@1", "ndcg_cut_3": "NDCG@3", "ndcg_cut_5": "NDCG@5", "ndcg_cut_10": "NDCG@10",
           "recip_rank": "MRR@10", "recall_100": "Recall@100", "success_3": "Accuracy@3"}
_TREC_EVAL = {"ndcg_cut.1,3,5,10", "recall.100", "success.3", "recip_rank"}


@dataclass
class BeirDataset:
    """A BEIR folder's queries (those with judgements, in file order), judgements and documents."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: dict[str, str]  # doc id -> "title text"


@dataclass
class Failure:
    """A candidate the reranker could not score; it is kept below the scored ones."""

    query_id: str
    doc_id: str
    error: str


@dataclass
class EvalResult:
    """Metrics before and after reranking, the reranked run and what went wrong."""

    first_stage: dict[str, float]  # column name -> mean over queries
    reranked: dict[str, float]
    run: Ranking  # the reranked top-k; failed candidates last, score -inf
    queries: int
    pairs: int
    top_k: int
    source: str  # "bm25" or the run file's path
    failures: list[Failure] = field(default_factory=list)
    truncated: int = 0  # pairs whose query or document was cut to fit max_length
    no_candidates: list[str] = field(default_factory=list)  # query ids the first stage found nothing for
    seconds: float = 0.0  # reranking time

    def to_json(self) -> dict[str, Any]:
        return {"queries": self.queries, "pairs": self.pairs, "top_k": self.top_k, "first_stage_source": self.source,
                "metrics": {"first_stage": _json_keys(self.first_stage), "reranked": _json_keys(self.reranked)},
                "failed": [vars(f) for f in self.failures], "truncated": self.truncated,
                "no_candidates": self.no_candidates, "rerank_seconds": round(self.seconds, 3)}


def _json_keys(metrics: dict[str, float]) -> dict[str, float]:
    return {name.lower(): value for name, value in metrics.items()}


# -- BEIR folder ---------------------------------------------------------------------------------

def _jsonl(path: Path):
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path} line {n} is not JSON: {e.msg}") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None


def _lines(path: Path, what: str) -> list[str]:
    """The lines of a text file, or a ValueError naming ``what`` could not be read."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror}") from None


def _row_id(row: Any, path: Path, n: int) -> str:
    if not isinstance(row, dict) or row.get("_id") is None:
        raise InputError(f"{path} line {n}: expected an object with an \"_id\"")
    return str(row["_id"])


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Judgements from a BEIR ``qrels/<split>.tsv`` (query-id, corpus-id, score; header optional)."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    lines = _lines(path, str(path))
    for n, line in enumerate(lines, 1):
        cols = line.split("\t") if "\t" in line else line.split()
        if not line.strip() or (n == 1 and cols[-1].strip() == "score"):
            continue
        try:
            qid, did, rel = cols
            qrels.setdefault(qid.strip(), {})[did.strip()] = int(rel)
        except ValueError:
            raise InputError(f"{path} line {n}: expected 'query-id<TAB>corpus-id<TAB>integer score', "
                             f"got {line!r:.80}") from None
    if not qrels:
        raise InputError(f"{path} has no judgements")
    return qrels


def load_beir(folder: str | Path, split: str = "test", max_queries: int | None = None,
              doc_ids: Collection[str] | None = None) -> BeirDataset:
    """Read a BEIR folder. Keeps the first ``max_queries`` judged queries of ``queries.jsonl``, and
    only the documents in ``doc_ids`` when given (to spare memory when a run names the candidates)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"BEIR folder {str(folder)!r} does not exist")
    qrels = load_qrels(folder / "qrels" / f"{split}.tsv")
    queries: dict[str, str] = {}
    seen = set()
    for n, row in _jsonl(folder / "queries.jsonl"):
        qid = _row_id(row, folder / "queries.jsonl", n)
        seen.add(qid)
        if qid in qrels and (max_queries is None or len(queries) < max_queries):
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{folder / 'queries.jsonl'} line {n}: query {qid!r} has no text")
            queries[qid] = text
    missing = [q for q in qrels if q not in seen]
    if missing:
        raise InputError(f"{len(missing)} judged queries are not in {folder / 'queries.jsonl'}, e.g. {missing[0]!r}")
    corpus = {}
    for n, row in _jsonl(folder / "corpus.jsonl"):
        did = _row_id(row, folder / "corpus.jsonl", n)
        if doc_ids is None or did in doc_ids:
            corpus[did] = f"{row.get('title') or ''} {row.get('text') or ''}".strip()
    return BeirDataset(queries, {q: qrels[q] for q in queries}, corpus)


# -- TREC run files ------------------------------------------------------------------------------

def read_trec_run(path: str | Path) -> Ranking:
    """A TREC run (``qid Q0 docid rank score tag``), each query's documents by score, ties in file order."""
    path = Path(path)
    run: dict[str, dict[str, float]] = {}
    lines = _lines(path, f"run file {str(path)!r}")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cols = line.split()
        try:
            qid, _, did, _, score = cols[:5]
            value = float(score)
        except ValueError:
            raise InputError(f"run file {path} line {n}: expected 'qid Q0 docid rank score tag', "
                             f"got {line!r:.80}") from None
        docs = run.setdefault(qid, {})
        if did in docs:
            raise InputError(f"run file {path} line {n}: document {did!r} appears twice for query {qid!r}")
        docs[did] = value
    return {q: sorted(docs.items(), key=lambda item: -item[1]) for q, docs in run.items()}


def write_trec_run(run: Ranking, path: str | Path, tag: str = "genrank") -> None:
    """Write ``run`` as a TREC run file, ranks from 1 in list order."""
    with Path(path).open("w", encoding="utf-8") as f:
        for qid, docs in run.items():
            for rank, (did, score) in enumerate(docs, 1):
                f.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")


# -- first stage, reranking, metrics ---------------------------------------------------------------

def bm25_run(corpus: dict[str, str], queries: dict[str, str], k: int) -> Ranking:
    """Top ``k`` documents per query by BM25 (bm25s defaults: Lucene variant, k1=1.5, b=0.75), English
    stopwords removed, no stemming. Documents that share no term with the query are not returned."""
    import bm25s

    ids = list(corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([corpus[d] for d in ids], stopwords="en", show_progress=False),
                    show_progress=False)
    query_tokens = bm25s.tokenize(list(queries.values()), stopwords="en", return_ids=False, show_progress=False)
    run: Ranking = {}
    for qid, tokens in zip(queries, query_tokens, strict=True):
        # get_scores drops tokens that are not in the index (BM25.get_tokens_ids); an empty list fails
        scores = retriever.get_scores(tokens) if tokens else np.zeros(len(ids))
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:  # down to the k-th best score; ties at the cut go by corpus order below
            hits = hits[scores[hits] >= np.partition(scores[hits], len(hits) - k)[len(hits) - k]]
        hits = hits[np.argsort(-scores[hits], kind="stable")][:k]
        run[qid] = [(ids[i], float(scores[i])) for i in hits]
    return run


def rerank_run(reranker, dataset: BeirDataset, first_stage: Ranking, top_k: int) -> tuple[Ranking, list[Failure], int]:
    """Rerank each query's top ``top_k`` candidates in one ``score_details`` call.

    Returns the reranked run (failed candidates last, in first-stage order, score -inf), the
    failures and the number of truncated pairs.
    """
    keys = [(qid, did) for qid in dataset.queries for did, _ in first_stage.get(qid, [])[:top_k]]
    if not keys:
        return {qid: [] for qid in dataset.queries}, [], 0
    result = reranker.score_details([(dataset.queries[q], dataset.corpus[d]) for q, d in keys])
    scored: dict[str, list[tuple[str, float]]] = {qid: [] for qid in dataset.queries}
    failed: dict[str, list[tuple[str, float]]] = {qid: [] for qid in dataset.queries}
    failures = []
    for i, (qid, did) in enumerate(keys):
        if i in result.errors:
            failed[qid].append((did, -math.inf))
            failures.append(Failure(qid, did, result.errors[i]))
        else:
            scored[qid].append((did, float(result.score[i])))
    run = {qid: sorted(scored[qid], key=lambda item: -item[1]) + failed[qid] for qid in dataset.queries}
    return run, failures, int(np.sum(result.truncated))


def compute_metrics(qrels: dict[str, dict[str, int]], run: Ranking) -> dict[str, float]:
    """Mean NDCG@1/3/5/10, MRR@10, Recall@100 and Accuracy@3 over every query of ``qrels``, by trec_eval.

    The order of each list in ``run`` is the ranking (trec_eval gets rank-derived scores, so ties and
    -inf scores cannot reorder it); a query missing from ``run`` counts 0, as ``trec_eval -c``.
    """
    import pytrec_eval

    ranked = {qid: {did: float(len(docs) - r) for r, (did, _) in enumerate(docs)}
              for qid, docs in run.items() if qid in qrels and docs}
    top10 = {qid: dict(list(docs.items())[:10]) for qid, docs in ranked.items()}  # dicts keep rank order
    per_query = pytrec_eval.RelevanceEvaluator(qrels, set(_TREC_EVAL) - {"recip_rank"}).evaluate(ranked)
    # trec_eval's recip_rank has no cutoff: MRR@10 is recip_rank of the top 10
    for qid, values in pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10).items():
        per_query[qid].update(values)
    return {name: sum(per_query.get(qid, {}).get(key, 0.0) for qid in qrels) / len(qrels)
            for key, name in METRICS.items()}


def load_first_stage(folder: str | Path, *, run_file: str | Path | None = None, split: str = "test",
                     top_k: int = 100, max_queries: int | None = None,
                     judged_documents: bool = False) -> tuple[BeirDataset, Ranking]:
    """A BEIR folder and each judged query's top ``top_k`` candidates, from ``run_file`` or BM25.

    With a run file only the candidates' documents are kept, and the judged ones too with
    ``judged_documents``."""
    if not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 1):
        raise InputError(f"max_queries must be a positive integer, got {max_queries!r}")
    if run_file is None:
        data = load_beir(folder, split, max_queries)
        return data, bm25_run(data.corpus, data.queries, top_k)
    full = read_trec_run(run_file)
    doc_ids = {d for q in full for d, _ in full[q][:top_k]}
    if judged_documents:
        doc_ids |= {d for docs in load_qrels(Path(folder) / "qrels" / f"{split}.tsv").values() for d in docs}
    data = load_beir(folder, split, max_queries, doc_ids=doc_ids)
    first = {qid: full.get(qid, [])[:top_k] for qid in data.queries}
    unknown = [(q, d) for q in first for d, _ in first[q] if d not in data.corpus]
    if unknown:
        raise InputError(f"run file {run_file}: {len(unknown)} candidates are not in corpus.jsonl, "
                         f"e.g. document {unknown[0][1]!r} for query {unknown[0][0]!r}")
    return data, first


def evaluate_run(reranker, data: BeirDataset, first_stage: Ranking, *, top_k: int = 100,
                 source: str = "bm25") -> EvalResult:
    """Rerank ``first_stage`` and compute the metrics before and after."""
    start = time.perf_counter()
    reranked, failures, truncated = rerank_run(reranker, data, first_stage, top_k)
    seconds = time.perf_counter() - start
    first = {qid: first_stage.get(qid, [])[:top_k] for qid in data.queries}
    return EvalResult(compute_metrics(data.qrels, first), compute_metrics(data.qrels, reranked), reranked,
                      queries=len(data.queries), pairs=sum(len(v) for v in reranked.values()), top_k=top_k,
                      source=source, failures=failures, truncated=truncated,
                      no_candidates=[q for q in data.queries if not first[q]], seconds=seconds)


def evaluate_reranker(reranker, folder: str | Path, *, run_file: str | Path | None = None, split: str = "test",
                      top_k: int = 100, max_queries: int | None = None) -> EvalResult:
    """Evaluate ``reranker`` on a BEIR folder: first stage from ``run_file`` or BM25, rerank its top ``top_k``.

    >>> result = evaluate_reranker(Reranker("lightblue/lb-reranker-0.5B-v1.0"), "scifact", max_queries=250)
    >>> print(format_table(result))
    """
    data, first = load_first_stage(folder, run_file=run_file, split=split, top_k=top_k, max_queries=max_queries)
    return evaluate_run(reranker, data, first, top_k=top_k, source="bm25" if run_file is None else str(run_file))


# -- report --------------------------------------------------------------------------------

def format_table(result: EvalResult) -> str:
    """The metrics as a text table (percent, like the model cards), with a summary line."""
    names = list(METRICS.values())
    first = "BM25 (bm25s)" if result.source == "bm25" else "first stage"
    width = max(len(first), len("reranked"))
    lines = [" " * width + "".join(f"{n:>12}" for n in names)]
    for label, metrics in ((first, result.first_stage), ("reranked", result.reranked)):
        lines.append(f"{label:<{width}}" + "".join(f"{100 * metrics[n]:>12.2f}" for n in names))
    lines.append(f"{result.queries} queries, top {result.top_k} candidates ({result.pairs} pairs) reranked in "
                 f"{result.seconds:.1f} s; {len(result.failures)} failed, {result.truncated} truncated, "
                 f"{len(result.no_candidates)} queries without candidates")
    return "\n".join(lines)


__all__ = ["BeirDataset", "EvalResult", "Failure", "METRICS", "Ranking", "bm25_run", "compute_metrics",
           "evaluate_reranker", "evaluate_run", "format_table", "load_beir", "load_first_stage", "load_qrels",
           "read_trec_run", "rerank_run", "write_trec_run"]

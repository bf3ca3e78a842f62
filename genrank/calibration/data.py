"""Labelled pairs for calibration: from a BEIR folder (qrels and a first stage) or a file of query, document, label.

A pair is relevant (label 1) when its grade is at least ``relevant_grade``. In a BEIR folder,
judged pairs take their qrels grade and the first stage's unjudged candidates count as not
relevant (as IR evaluation does); ``judged_only`` keeps the judged pairs alone.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..errors import InputError
from ..evaluate import load_beir, load_first_stage, load_qrels


@dataclass
class LabelledPairs:
    """Pairs with 0/1 labels, the query each belongs to (the unit of the fit/held-out split), and their source."""

    query_ids: list[str]
    queries: list[str]
    documents: list[str]
    labels: np.ndarray  # (N,) int 0/1
    grades: list[float | None]  # the grade each label came from; None: an unjudged candidate
    source: dict[str, Any] = field(default_factory=dict)  # where the pairs came from and the labelling rule

    def __len__(self) -> int:
        return len(self.labels)

    def jsonl(self) -> bytes:
        """The pairs as JSON lines (id, query_id, query, document, label, grade): what is scored."""
        lines = [json.dumps({"id": n, "query_id": q, "query": query, "document": doc, "label": int(label),
                             "grade": grade}, ensure_ascii=False)
                 for n, (q, query, doc, label, grade) in enumerate(zip(self.query_ids, self.queries, self.documents,
                                                                       self.labels, self.grades))]
        return ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")

    def fingerprint(self) -> str:
        """SHA-256 of ``jsonl()``: the same pairs, labels and queries give the same fingerprint."""
        return hashlib.sha256(self.jsonl()).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {**self.source, "sha256": self.fingerprint(), "pairs": len(self), "positives": int(self.labels.sum()),
                "queries": len(set(self.query_ids))}


def check_grade(relevant_grade: Any) -> float:
    if isinstance(relevant_grade, bool) or not isinstance(relevant_grade, (int, float)) \
            or not math.isfinite(relevant_grade):
        raise InputError(f"relevant_grade must be a number, got {relevant_grade!r}")
    return relevant_grade


def from_beir(folder: str | os.PathLike, *, run_file: str | os.PathLike | None = None, split: str = "test",
              top_k: int = 100, max_queries: int | None = None, judged_only: bool = False,
              relevant_grade: float = 1) -> LabelledPairs:
    """Labelled pairs of a BEIR folder: each judged query's first-stage top ``top_k`` (``run_file`` or
    BM25; unjudged: not relevant) and its judged pairs, or with ``judged_only`` the judged pairs alone."""
    check_grade(relevant_grade)
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not folder.is_dir():
        raise InputError(f"BEIR folder {str(folder)!r} does not exist")
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        others = f"; it has qrels for {', '.join(found)} (choose with --split)" if found else ""
        raise InputError(f"BEIR folder {str(folder)!r} has no qrels/{split}.tsv: calibration needs relevance "
                         f"judgements{others}")
    if judged_only:
        judged = {d for docs in load_qrels(qrels_path).values() for d in docs}
        data, first = load_beir(folder, split, max_queries, doc_ids=judged), {}
    else:
        data, first = load_first_stage(folder, run_file=run_file, split=split, top_k=top_k, max_queries=max_queries,
                                       judged_documents=True)
    rows: list[tuple[str, str, float | None]] = []
    no_document = 0
    for qid in data.queries:
        candidates = [did for did, _ in first.get(qid, [])[:top_k]]
        rows += [(qid, did, data.qrels[qid].get(did)) for did in candidates]
        for did, grade in data.qrels[qid].items():
            if did in candidates:
                continue
            if did in data.corpus:
                rows.append((qid, did, grade))
            else:
                no_document += 1
    if not rows:
        raise InputError(f"BEIR folder {str(folder)!r} gives no pairs to calibrate on")
    grades = [None if g is None else float(g) for _, _, g in rows]
    source = {"kind": "beir", "path": os.path.abspath(folder), "qrels": f"qrels/{split}.tsv",
              "judged_only": judged_only,
              "first_stage": None if judged_only else (os.path.abspath(run_file) if run_file else "bm25"),
              "top_k": None if judged_only else top_k, "max_queries": max_queries,
              "relevant": f"qrels grade >= {relevant_grade:g}",
              "unjudged": None if judged_only else "first-stage candidates without a judgement count as not relevant",
              "judged_pairs": sum(g is not None for g in grades), "unjudged_pairs": sum(g is None for g in grades),
              "judged_without_document": no_document}
    return LabelledPairs([q for q, _, _ in rows], [data.queries[q] for q, _, _ in rows],
                         [data.corpus[d] for _, d, _ in rows], _labels(grades, relevant_grade), grades, source)


def from_file(path: str | os.PathLike, *, format: str | None = None, query_field: str = "query",
              document_field: str = "document", label_field: str = "label", query_id_field: str | None = None,
              relevant_grade: float = 1) -> LabelledPairs:
    """Labelled pairs of a JSONL, CSV or Parquet file with a query, a document and a label (0/1 or a
    grade) per row. Pairs are grouped by ``query_id_field`` when given, else by the query text.
    Any bad row is a ValueError naming its line (or row) and field."""
    check_grade(relevant_grade)
    if not os.path.exists(path):
        raise InputError(f"labelled data {str(path)!r} does not exist")
    fmt = io.detect_format(path, format)
    fields = io.Fields(query_field, document_field)
    query_ids, queries, documents, grades = [], [], [], []
    for index, where, record in _records(Path(path), fmt, [query_field, document_field, label_field,
                                                           *([query_id_field] if query_id_field else [])]):
        row = io.parse_row(record, index, where, fields)
        if row.error is not None:
            raise InputError(f"{str(path)!r} {row.error}")
        grades.append(_grade(record.get(label_field), label_field, where, path))
        queries.append(row.query)
        documents.append(row.documents[0])
        if query_id_field is None:
            query_ids.append(row.query)
        else:
            qid = record.get(query_id_field)
            if qid is None or isinstance(qid, (float, bool, list, dict)):
                raise InputError(f"{str(path)!r} {where}: field {query_id_field!r} must be a string or an integer, "
                                 f"got {qid!r:.80}")
            query_ids.append(str(qid))
    if not grades:
        raise InputError(f"labelled data {str(path)!r} has no rows")
    source = {"kind": "file", "path": os.path.abspath(path), "format": fmt, "label_field": label_field,
              "query_id": query_id_field or "the query text", "relevant": f"{label_field} >= {relevant_grade:g}"}
    return LabelledPairs(query_ids, queries, documents, _labels(grades, relevant_grade), grades, source)


def _labels(grades: list[float | None], relevant_grade: float) -> np.ndarray:
    return np.array([g is not None and g >= relevant_grade for g in grades], dtype=int)


def _grade(value: Any, name: str, where: str, path: Any) -> float:
    """A label as a number: a JSON number or boolean, or a string holding one (CSV)."""
    number = None
    if isinstance(value, (bool, int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise InputError(f"{str(path)!r} {where}: field {name!r} must be a number (0/1, or a grade with "
                         f"--relevant-grade), got {value!r:.80}")
    return number


def _records(path: Path, fmt: str, columns: list[str]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(row number from 0, "line N" or "row N", record) for each row of a JSONL, CSV or Parquet file."""
    if fmt == "jsonl":
        with open(path, "rb") as f:
            index = 0
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise InputError(f"{str(path)!r} line {n} is not valid JSON: {e}") from None
                if not isinstance(record, dict):
                    raise InputError(f"{str(path)!r} line {n}: expected an object with fields, got {record!r:.80}")
                yield index, f"line {n}", record
                index += 1
    elif fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            _check_columns(path, reader.fieldnames or [], columns)
            for index, record in enumerate(reader):
                yield index, f"line {reader.line_num}", {k: v for k, v in record.items() if k is not None}
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        _check_columns(path, pf.schema_arrow.names, columns)
        index = 0
        for batch in pf.iter_batches(batch_size=4096, columns=columns):
            for record in batch.to_pylist():
                yield index, f"row {index + 1}", record
                index += 1


def _check_columns(path: Path, names: list[str], columns: list[str]) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(f"{str(path)!r} has no column {missing[0]!r} (columns: {', '.join(names) or 'none'})")


__all__ = ["LabelledPairs", "from_beir", "from_file"]

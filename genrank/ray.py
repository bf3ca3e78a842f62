"""Batch scoring on Ray Data, for inputs one machine cannot score in time (``pip install 'genrank[ray]'``).

Read -> ``map_batches`` over an actor pool, each actor holding one Reranker (so one engine, on
``num_gpus`` GPUs) -> write. Rows are validated and scored exactly as ``genrank.batch`` does;
output rows are ``id, score, label_mass, error`` but not in input order (join on ``id``), so the
input needs an id field. Ray schedules everything; genrank adds no scheduler of its own.

>>> import functools, ray
>>> from genrank import Reranker
>>> from genrank.ray import score_files_ray
>>> ray.init()
>>> make = functools.partial(Reranker, "lightblue/lb-reranker-0.5B-v1.0", engine="vllm")
>>> score_files_ray("pairs.parquet", "scores/", make, num_gpus=1, concurrency=8)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import ray.data

from . import io
from .batch import BatchSummary, score_rows
from .io import Fields
from .reranker import Reranker

RAY_FORMATS = ("jsonl", "parquet")


class _Scorer:
    """One actor of the pool: builds its Reranker once, then scores batches (pyarrow tables)."""

    def __init__(self, make_reranker: Callable[[], Reranker], fields: Fields):
        self.reranker = make_reranker()
        self.fields = fields

    def __call__(self, batch: pa.Table) -> pa.Table:
        list_mode = self.fields.documents is not None
        rows = [io.parse_row(record, None, f"id {record.get(self.fields.id)!r}", self.fields)
                for record in batch.to_pylist()]
        schema = io.output_schema(batch.schema.field(self.fields.id).type, list_mode,
                                  probability=self.reranker.calibration is not None)
        return pa.Table.from_pylist(score_rows(self.reranker, rows, list_mode), schema=schema)


def score_dataset(ds: ray.data.Dataset, make_reranker: Callable[[], Reranker], *, query_field: str = "query",
                  document_field: str = "document", id_field: str = "id", documents_field: str | None = None,
                  batch_size: int = 1024, concurrency: int = 1, num_gpus: float = 0.0,
                  num_cpus: float | None = None) -> ray.data.Dataset:
    """A lazy Dataset of ``id, score, label_mass, error`` rows for the rows of ``ds``.

    ``make_reranker`` is a picklable zero-argument callable (e.g. ``functools.partial(Reranker,
    model, engine="vllm")``) that each of the ``concurrency`` actors calls once; each actor gets
    ``num_gpus`` GPUs and ``num_cpus`` CPUs (Ray's default when None).
    """
    fields = Fields(query_field, document_field, id_field, documents_field)
    io.check_columns("the dataset", ds.schema().names, fields, need_id=True)
    extra = {"num_cpus": num_cpus} if num_cpus is not None else {}
    return ds.map_batches(_Scorer, fn_constructor_kwargs={"make_reranker": make_reranker, "fields": fields},
                          batch_size=batch_size, batch_format="pyarrow", concurrency=concurrency,
                          num_gpus=num_gpus, **extra)


def score_files_ray(input_path: str | os.PathLike, output_path: str | os.PathLike,
                    make_reranker: Callable[[], Reranker], *, format: str | None = None,
                    **options: Any) -> BatchSummary:
    """Score a JSONL or Parquet file (or folder of them) into the new folder ``output_path``, same format.

    ``options`` are ``score_dataset``'s. Returns the run's summary (rows that could not be read
    count as one failed pair each, as in ``genrank.batch``).
    """
    fmt = io.detect_format(input_path, format) if format or not os.path.isdir(input_path) else "parquet"
    if fmt not in RAY_FORMATS:
        raise ValueError(f"Ray scoring reads and writes jsonl or parquet, not {fmt}")
    if os.path.exists(output_path):  # Ray Data appends: a rerun would add a second copy of every row
        raise ValueError(f"{str(output_path)!r} exists; Ray scoring writes a new folder and does not resume or "
                         "overwrite: remove it or choose another folder")
    start = time.perf_counter()
    path = str(input_path)
    ds = ray.data.read_parquet(path) if fmt == "parquet" else ray.data.read_json(path, lines=True)
    scored = score_dataset(ds, make_reranker, **options).materialize()  # small rows: ids and floats
    summary = BatchSummary()
    for batch in scored.select_columns(["score", "error"]).iter_batches(batch_format="pyarrow"):
        for score, error in zip(batch.column("score").to_pylist(), batch.column("error").to_pylist()):
            summary.pairs += len(score) if isinstance(score, list) else 1
            if error is not None:
                summary.failed += sum(s is None for s in score) if isinstance(score, list) else 1
    if fmt == "parquet":
        scored.write_parquet(str(output_path))
    else:  # pandas writes the JSON lines: 15 significant digits is its most
        scored.write_json(str(output_path), force_ascii=False, double_precision=15)
    summary.seconds = time.perf_counter() - start
    return summary

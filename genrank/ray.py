"""Batch scoring on Ray Data that resumes exactly once (``pip install 'genrank[ray]'``).

One streaming pass: read (Arrow) -> ``repartition(target_num_rows_per_block=chunk_size)`` ->
``map_batches`` over an actor pool, each actor holding one Reranker (one engine, on ``num_gpus``
GPUs) -> write. Rows are validated and scored as ``genrank.batch`` does; output rows are the
input's id (under its own column name), ``score``, ``label_mass`` and ``error``, not in input order.

Resume is Ray Data's own checkpointing (``ray.data.checkpoint``): each write task records the ids
it writes in ``OUTPUT.ckpt/`` with a two-phase commit (pending ids, data file, rename), a rerun
drops the committed ids as it reads and deletes the files of writes that never committed. Beside
them, ``OUTPUT.genrank.json`` is the manifest ``genrank.batch`` writes (settings that decide the
scores, input fingerprint): a rerun resumes only with the same settings and input, and a refusal
touches nothing. The checkpoint is kept after success, so rerunning a finished job scores nothing.
The actors are paced to the writes (``_WritePace``): at most two blocks per actor are queued,
being scored, or scored and not yet written, so a kill loses at most about that.

>>> import functools, ray
>>> from genrank import Reranker
>>> from genrank.ray import score_files_ray
>>> ray.init()
>>> make = functools.partial(Reranker, "lightblue/lb-reranker-0.5B-v1.0", engine="vllm")
>>> score_files_ray("pairs.parquet", "scores/", make, num_gpus=1, concurrency=8)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import posixpath
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq
import ray
import ray.data
import ray.util.client
from ray.data.block import BlockAccessor
from ray.data.datasource.file_datasink import BlockBasedFileDatasink

from . import io
from .batch import BatchSummary, score_rows
from .errors import InputError, ResumeError
from .io import Fields
from .manifest import SAMPLE_BYTES, SUFFIX, Manifest
from .reranker import Reranker

try:  # two-phase commit of file sinks: ids committed only with their data file
    from ray.data.checkpoint import CheckpointConfig
    from ray.data.checkpoint.checkpoint_writer import PENDING_CHECKPOINT_SUFFIX
except ImportError:  # an older Ray: no resume
    CheckpointConfig = None  # type: ignore[assignment,misc]
    PENDING_CHECKPOINT_SUFFIX = ".pending"
try:  # Ray Data's extension point for pacing operators (DataContext config "backpressure_policies.enabled")
    from ray.data._internal.execution.backpressure_policy import (
        ENABLED_BACKPRESSURE_POLICIES,
        ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
        BackpressurePolicy,
    )
    from ray.data._internal.execution.interfaces.op_runtime_metrics import OpRuntimeMetrics

    if not {"num_row_inputs_received", "rows_task_outputs_generated", "bytes_task_outputs_generated",
            "bytes_task_inputs_processed"} <= {f.name for f in dataclasses.fields(OpRuntimeMetrics)}:
        raise ImportError("Ray Data's operator metrics that _WritePace reads are not all there")
except ImportError:  # a Ray that moved or renamed them: the writes are not paced
    BackpressurePolicy = None  # type: ignore[assignment,misc]

RAY_FORMATS = ("jsonl", "parquet")
CHECKPOINT_SUFFIX = ".ckpt"
RESUME_NEEDS = "Ray 2.60 or later (ray.data.checkpoint with two-phase commit)"
_OUTPUT_NAMES = ("score", "label_mass", "error")
NODE_LOST_ERRORS = ["ActorDiedError", "ActorUnavailableError", "NodeDiedError", "ObjectLostError", "OwnerDiedError"]


class RayJobError(RuntimeError):
    """The Ray job stopped; what it committed stays for a rerun."""


class EngineStartError(RayJobError):
    """The engine could not start on the cluster: nothing was scored or written."""


class _Scorer:
    """One actor of the pool: builds its Reranker once, then scores batches (pyarrow tables)."""

    def __init__(self, make_reranker: Callable[[], Reranker], fields: Fields):
        self.reranker = make_reranker()
        self.fields = fields

    def __del__(self) -> None:  # Ray Data calls it when the actor pool shuts down gracefully
        reranker = getattr(self, "reranker", None)
        if reranker is not None:
            reranker.close()

    def __call__(self, batch: pa.Table) -> pa.Table:
        list_mode = self.fields.documents is not None
        rows = [io.parse_row(record, None, f"id {record.get(self.fields.id)!r}", self.fields)
                for record in batch.to_pylist()]
        schema = io.output_schema(batch.schema.field(self.fields.id).type, list_mode,
                                  probability=self.reranker.calibration is not None)
        scored = pa.Table.from_pylist(score_rows(self.reranker, rows, list_mode), schema=schema)
        return scored.rename_columns([self.fields.id, *schema.names[1:]])  # the id keeps its column name


def score_dataset(ds: ray.data.Dataset, make_reranker: Callable[[], Reranker], *, query_field: str = "query",
                  document_field: str = "document", id_field: str = "id", documents_field: str | None = None,
                  batch_size: int = 1024, concurrency: int = 1, num_gpus: float = 0.0,
                  num_cpus: float | None = None) -> ray.data.Dataset:
    """A lazy Dataset of ``ID, score, label_mass, error`` rows for the rows of ``ds`` (``ID`` is ``id_field``).

    ``make_reranker`` is a picklable zero-argument callable (e.g. ``functools.partial(Reranker,
    model, engine="vllm")``) that each of the ``concurrency`` actors calls once; each actor gets
    ``num_gpus`` GPUs and ``num_cpus`` CPUs (Ray's default when None) and scores ``batch_size``
    rows per call.
    """
    fields = Fields(query_field, document_field, id_field, documents_field)
    io.check_columns("the dataset", ds.schema().names, fields, need_id=True)
    return _scored(ds, make_reranker, fields, batch_size, concurrency, _resources(num_gpus, num_cpus))


def _scored(ds: ray.data.Dataset, make_reranker: Callable[[], Reranker], fields: Fields, batch_size: int,
            concurrency: int, resources: dict[str, Any]) -> ray.data.Dataset:
    return ds.map_batches(_Scorer, fn_constructor_kwargs={"make_reranker": make_reranker, "fields": fields},
                          batch_size=batch_size, batch_format="pyarrow",
                          compute=ray.data.ActorPoolStrategy(size=concurrency), **resources)


def local_cpus(concurrency: int, num_cpus: float | None) -> int:
    """Logical CPUs for a Ray started on this machine for one job: the machine's, or more if the job
    needs them. Besides the actors (``num_cpus`` each, Ray's 1 when None), a resume runs Ray's
    checkpoint filter as an actor of one CPU, and reading and writing need one more; on a small
    machine the read would otherwise wait for a CPU forever."""
    return max(os.cpu_count() or 1, math.ceil(concurrency * (1.0 if num_cpus is None else num_cpus)) + 2)


def _driver_on_cluster(score: Callable[..., BatchSummary]) -> Callable[..., BatchSummary]:
    """Through Ray Client (``ray.init("ray://...")``), run ``score`` as a task on the cluster.

    Ray Data's executor needs a driver inside the cluster (through the client it fails in
    ``core_worker``), so the whole job runs as one zero-CPU task there, on the node Ray picks;
    local paths are made absolute first, and must name the same shared storage on the cluster.
    The task's own refusals and errors are raised here as they are; Ctrl-C cancels it.
    """
    @functools.wraps(score)
    def run(input_path: str | os.PathLike, output_path: str | os.PathLike, *args: Any, **kwargs: Any) -> BatchSummary:
        if not ray.util.client.ray.is_connected():
            return score(input_path, output_path, *args, **kwargs)
        # ``run`` itself (it pickles by reference), which on the cluster takes the branch above
        task = ray.remote(num_cpus=0, max_retries=0)(run).remote(
            _uri(os.fspath(input_path)), _uri(os.fspath(output_path)), *args, **kwargs)
        try:
            return ray.get(task)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, Exception):
                raise e.cause from None
            raise
        except KeyboardInterrupt:
            ray.cancel(task)
            raise

    return run


@_driver_on_cluster
def score_files_ray(input_path: str | os.PathLike, output_path: str | os.PathLike,
                    make_reranker: Callable[[], Reranker], *, format: str | None = None, overwrite: bool = False,
                    query_field: str = "query", document_field: str = "document", id_field: str = "id",
                    documents_field: str | None = None, chunk_size: int = 1024, concurrency: int = 1,
                    num_gpus: float = 0.0, num_cpus: float | None = None) -> BatchSummary:
    """Score a JSONL or Parquet file (or folder of them) into the folder ``output_path``, same format.

    Paths may be local (on a cluster: shared storage, e.g. NFS) or any URI pyarrow opens (``s3://``).
    Through Ray Client (``ray://``) the job runs as a task on the cluster (see ``_driver_on_cluster``).
    Each write commits about ``chunk_size`` rows. An existing output is resumed when its checkpoint
    (``OUTPUT.ckpt/``) and manifest (``OUTPUT.genrank.json``) are there and the manifest matches
    this run; otherwise a ResumeError says why and nothing changes. ``overwrite=True`` removes all
    three first. Ids must be present and unique (the checkpoint knows rows only by id).

    Returns the run's summary: pairs scored now (rows that could not be read count as one failed
    pair each, as in ``genrank.batch``), failed, and skipped (pairs an earlier run wrote). Raises
    EngineStartError if the engine cannot start; any error during the run leaves what was
    committed for a rerun.
    """
    if chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size!r}")
    start = time.perf_counter()
    input_path, output_path = os.fspath(input_path), os.fspath(output_path).rstrip("/")
    fields = Fields(query_field, document_field, id_field, documents_field)
    if id_field in _OUTPUT_NAMES:
        raise InputError(f"the id field cannot be named {id_field!r}: the output has a column of that name")
    in_fs, in_path = _filesystem(input_path)
    files = _input_files(in_fs, in_path)
    fmt = _format(input_path, files, format)
    out_fs, out = _filesystem(output_path)
    ckpt, manifest_file = out + CHECKPOINT_SUFFIX, out + SUFFIX
    found = {what: _exists(out_fs, path) for what, path in
             (("output", out), ("checkpoint", ckpt), ("manifest", manifest_file))}

    # Checks: reads only, so a refusal leaves every file as it was.
    if any(found.values()) and not overwrite:
        _check_resumable(output_path, found)
    io.check_columns(repr(input_path), _columns(in_fs, files[0].path, fmt), fields, need_id=True)
    fingerprint = _fingerprint(in_fs, files, fmt, input_path)
    probe = _probe(make_reranker, input_path, fmt, fields, fingerprint, _resources(num_gpus, num_cpus))
    ds = _read(input_path, files, fmt)
    try:
        rows = _check_ids(ds, id_field, input_path)
    except BaseException:
        ray.cancel(probe)
        raise
    run = _started(probe)
    if found["manifest"] and not overwrite:
        earlier = Manifest.from_json(_read_bytes(out_fs, manifest_file), manifest_file)
        changes = earlier.differences(run)
        if changes:
            raise ResumeError(f"{output_path!r} cannot be resumed by this run: {'; '.join(changes)}. Rerun with "
                             "the earlier settings and input, start over with --overwrite, or choose another output")

    if overwrite:
        for what, path in (("manifest", manifest_file), ("checkpoint", ckpt), ("output", out)):
            if found[what]:
                out_fs.delete_file(path) if what == "manifest" else out_fs.delete_dir(path)
    if overwrite or not found["manifest"]:
        _write_bytes(out_fs, manifest_file, run.to_json())
    before = set(_output_files(out_fs, out))
    if CheckpointConfig is None or _committed_rows(out_fs, ckpt) < rows:  # else all done: nothing to write
        if CheckpointConfig is not None:
            ds.context.checkpoint_config = CheckpointConfig(id_field, _uri(output_path) + CHECKPOINT_SUFFIX,
                                                            delete_checkpoint_on_success=False)
            _pace_to_writes(ds.context, rows=2 * concurrency * chunk_size)  # what a kill can lose
        # A task that was waiting on an actor or object of a lost node runs again (Ray retries the
        # lost node's own tasks and actors by itself); errors of the engine are not retried.
        ds.context.retried_map_errors, ds.context.max_map_retries = NODE_LOST_ERRORS, 3
        scored = _scored(ds.repartition(target_num_rows_per_block=chunk_size), make_reranker, fields, chunk_size,
                         concurrency, _resources(num_gpus, num_cpus))
        try:
            _write(scored, output_path, fmt)
        except Exception as e:  # Ray's error holds the remote traceback: say what happened in one line
            raise RayJobError(f"the Ray job stopped: {_cause(e)}; the rows written so far are committed: rerun the "
                              "same command to resume") from e
    after = _output_files(out_fs, out)
    summary = BatchSummary()
    for path in after:
        pairs, failed = _count(out_fs, path, fmt)
        if path in before:
            summary.skipped += pairs
        else:
            summary.pairs += pairs
            summary.failed += failed
    summary.seconds = time.perf_counter() - start
    return summary


# -- pacing ---------------------------------------------------------------------------------


def _pace_to_writes(context: ray.data.DataContext, rows: int) -> None:
    """Let at most about ``rows`` rows be at the actors or scored and waiting for their write.

    Ray Data bounds the queues between operators by object-store bytes, which blocks of scores (a
    few KB) never reach: when write tasks are slow to start (new worker processes, a busy node) the
    actors would score far ahead of the commits, and a kill would lose all of that.
    """
    if BackpressurePolicy is None:
        return
    context.set_config(_WRITE_PACE_KEY, rows)
    policies = context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES)
    context.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [*policies, _WritePace])


_WRITE_PACE_KEY = "genrank.rows_ahead_of_write"

if BackpressurePolicy is not None:
    class _WritePace(BackpressurePolicy):
        """Takes no more input into the operator that feeds the write (one row out per row in) while
        ``_WRITE_PACE_KEY`` rows are in it, or out of it and not yet written; other operators: no limit."""

        def can_add_input(self, op: Any) -> bool:
            limit = self._data_context.get_config(_WRITE_PACE_KEY)
            downstream = op.output_dependencies
            if limit is None or len(downstream) != 1 or downstream[0].output_dependencies:
                return True
            made, written = op.metrics, downstream[0].metrics
            unscored = made.num_row_inputs_received - made.rows_task_outputs_generated  # queued or scoring
            unwritten_bytes = made.bytes_task_outputs_generated - written.bytes_task_inputs_processed
            rows_per_byte = made.rows_task_outputs_generated / max(made.bytes_task_outputs_generated, 1)
            return unscored + unwritten_bytes * rows_per_byte < limit


# -- checks ---------------------------------------------------------------------------------


def _check_resumable(output_path: str, found: dict[str, bool]) -> None:
    """A ResumeError unless an existing output can be resumed (its checkpoint and manifest are there)."""
    if CheckpointConfig is None:
        raise ResumeError(f"{output_path!r} exists and resuming it needs {RESUME_NEEDS}; this is Ray "
                          f"{ray.__version__}: upgrade Ray, start over with --overwrite, or choose another output")
    if not found["manifest"]:
        raise ResumeError(f"{output_path!r} has no manifest ({posixpath.basename(output_path)}{SUFFIX}), so its "
                          "settings and input cannot be checked; start over with --overwrite or choose another output")
    if found["output"] and not found["checkpoint"]:
        raise ResumeError(f"{output_path!r} has no checkpoint ({posixpath.basename(output_path)}{CHECKPOINT_SUFFIX}/), "
                          "so the rows it holds are unknown; start over with --overwrite or choose another output")


def _check_ids(ds: ray.data.Dataset, id_field: str, source: str) -> int:
    """The number of rows; an InputError if an id is null or repeated (the checkpoint knows rows by id).

    All ids meet in one task, as in Ray's own checkpoint loading, which holds them all in memory too.
    """
    found = ds.select_columns([id_field]).repartition(1).map_batches(
        _repeated_ids, fn_kwargs={"column": id_field}, batch_size=None, batch_format="pyarrow").take_all()
    rows = sum(r["rows"] for r in found)
    nulls = sum(r["nulls"] for r in found)
    repeated = [value for r in found for value in r["repeated"]]
    if nulls:
        raise InputError(f"{source!r}: {nulls:,} rows have a null {id_field!r}; Ray scoring needs an id in every row")
    if repeated:
        shown = ", ".join(repeated[:5])
        raise InputError(f"{source!r}: ids repeat in field {id_field!r} (e.g. {shown}); Ray scoring resumes by id, "
                         "so each row needs its own")
    return rows


def _repeated_ids(batch: pa.Table, column: str) -> pa.Table:
    """One row: the batch's row count, null ids, and up to five repeated ids (as repr)."""
    ids = batch.column(column)
    counts = pc.value_counts(ids.drop_null())
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").slice(0, 5).to_pylist()
    return pa.table({"rows": [len(ids)], "nulls": [ids.null_count], "repeated": [[repr(v) for v in repeated]]})


def _probe(make_reranker: Callable[[], Reranker], input_path: str, fmt: str, fields: Fields,
           fingerprint: dict[str, Any], resources: dict[str, Any]) -> ray.ObjectRef:
    """The manifest of this run, from a Reranker built on the cluster as the actors build theirs
    (``_started`` waits for it). It also checks that the engine starts before anything is written."""
    @ray.remote(max_retries=0)
    def manifest() -> Manifest:
        with make_reranker() as reranker:
            return Manifest.for_run(reranker, input_path, fmt, fields, 0, (0, 1), input_fingerprint=fingerprint)

    return manifest.options(**resources).remote()


def _started(probe: ray.ObjectRef) -> Manifest:
    try:
        return ray.get(probe)
    except ray.exceptions.RayTaskError as e:
        raise EngineStartError(f"the engine could not start on the cluster: {_cause(e)}") from None


def _cause(error: BaseException) -> str:
    """The first exception of a Ray error's remote traceback (the user code's), as one line."""
    text = str(error).split("\n\nThe above exception was the direct cause")[0].strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _resources(num_gpus: float, num_cpus: float | None) -> dict[str, Any]:
    return {"num_gpus": num_gpus, **({"num_cpus": num_cpus} if num_cpus is not None else {})}


# -- files ----------------------------------------------------------------------------------


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``path`` (a URI, else local) and the path within it."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _uri(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _write_bytes(fs: pafs.FileSystem, path: str, content: bytes) -> None:
    """Replace ``path``'s content at once: a temporary file renamed into place (one PUT on object stores)."""
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(content)
    fs.move(tmp, path)


def _input_files(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input {path!r} does not exist")
    if info.type == pafs.FileType.File:
        return [info]
    found = [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
             if f.type == pafs.FileType.File and not posixpath.basename(f.path).startswith((".", "_"))]
    if not found:
        raise InputError(f"input folder {path!r} holds no files")
    return sorted(found, key=lambda f: f.path)


def _format(input_path: str, files: list[pafs.FileInfo], format: str | None) -> str:
    if format is None:
        formats = {io.FORMATS.get(posixpath.splitext(f.path)[1].lower()) for f in files}
        if len(formats) != 1 or None in formats:
            raise InputError(f"cannot tell the format of {input_path!r} from its file names; give the format")
        format = formats.pop()
    fmt = io.detect_format(input_path, format)
    if fmt not in RAY_FORMATS:
        raise InputError(f"Ray scoring reads and writes jsonl or parquet, not {fmt}")
    return fmt


def _fingerprint(fs: pafs.FileSystem, files: list[pafs.FileInfo], fmt: str, input_path: str) -> dict[str, Any]:
    """``manifest.fingerprint`` for any filesystem and for folders: total size, SHA-256 of the first
    MiB of the first file (with the folder's names and sizes) and of the last MiB of the last, rows
    (Parquet, from the footers)."""
    with fs.open_input_file(files[0].path) as f:
        first = f.read(SAMPLE_BYTES)
    with fs.open_input_file(files[-1].path) as f:
        f.seek(max(files[-1].size - SAMPLE_BYTES, 0))
        last = f.read()
    head = hashlib.sha256(first)
    if len(files) > 1:
        head.update(json.dumps([(f.path, f.size) for f in files]).encode())
    rows = None
    if fmt == "parquet":
        rows = 0
        for info in files:
            with fs.open_input_file(info.path) as f:
                rows += pq.ParquetFile(f).metadata.num_rows
    return {"path": _uri(input_path), "size": sum(f.size for f in files), "head_sha256": head.hexdigest(),
            "tail_sha256": hashlib.sha256(last).hexdigest(), "rows": rows}


def _columns(fs: pafs.FileSystem, path: str, fmt: str) -> list[str]:
    """The column names of an input file: the Parquet schema, or the fields of the first JSON lines."""
    with fs.open_input_file(path) as f:
        if fmt == "parquet":
            return pq.read_schema(f).names
        head = f.read(SAMPLE_BYTES)
    head = head[:head.rfind(b"\n") + 1] or head
    try:
        return pajson.read_json(pa.BufferReader(head)).column_names
    except pa.ArrowInvalid as e:
        raise InputError(f"{path!r} does not start with JSON lines Arrow can read: {e}") from None


def _read(input_path: str, files: list[pafs.FileInfo], fmt: str) -> ray.data.Dataset:
    """The input as Arrow blocks (Ray's checkpoint filter needs them; ``read_json(lines=True)`` gives pandas)."""
    paths = [_uri(input_path)] if len(files) == 1 else [
        f"{input_path.split('://')[0]}://{f.path}" if "://" in input_path else f.path for f in files]
    if fmt == "parquet":
        return ray.data.read_parquet(paths)
    return ray.data.read_json(paths, file_extensions=None)  # pyarrow.json: one object per line


class _JsonlSink(BlockBasedFileDatasink):
    """JSON lines as ``genrank.batch`` writes them (shortest round-trip floats, ``error`` only when set)."""

    def __init__(self, path: str, **kwargs: Any):
        super().__init__(path, file_format="jsonl", **kwargs)

    def write_block_to_file(self, block: BlockAccessor, file: pa.NativeFile) -> None:
        lines = []
        for record in block.to_arrow().to_pylist():
            if record.get("error") is None:
                record.pop("error", None)
            lines.append(json.dumps(record, ensure_ascii=False))
        file.write(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))


def _write(ds: ray.data.Dataset, output_path: str, fmt: str) -> None:
    if fmt == "parquet":
        ds.write_parquet(_uri(output_path))
    else:
        ds.write_datasink(_JsonlSink(_uri(output_path)))


def _output_files(fs: pafs.FileSystem, path: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(f.path for f in infos if f.type == pafs.FileType.File)


def _committed_rows(fs: pafs.FileSystem, ckpt: str) -> int:
    """Ids committed to the checkpoint (pending ones are not: their data files get deleted on resume)."""
    total = 0
    for path in _output_files(fs, ckpt):
        if path.endswith(".parquet") and not path.endswith(f"{PENDING_CHECKPOINT_SUFFIX}.parquet"):
            with fs.open_input_file(path) as f:
                total += pq.ParquetFile(f).metadata.num_rows
    return total


def _count(fs: pafs.FileSystem, path: str, fmt: str) -> tuple[int, int]:
    """(pairs, failed pairs) of one output file, from its score and error columns."""
    with fs.open_input_file(path) as f:
        if fmt == "parquet":
            table = pq.read_table(f, columns=["score", "error"])
        else:
            table = pajson.read_json(f)
    if not table.num_rows:
        return 0, 0
    score = table.column("score")
    has_error = (pc.is_valid(table.column("error")) if "error" in table.column_names
                 else pa.array([False] * table.num_rows))
    if pa.types.is_list(score.type):  # a row that could not be read has no list: one failed pair
        pairs = failed = 0
        for scores, error in zip(score.to_pylist(), has_error.to_pylist()):
            pairs += len(scores) if scores is not None else 1
            failed += (sum(s is None for s in scores) if scores is not None else 1) if error else 0
        return pairs, failed
    return table.num_rows, pc.sum(pc.cast(has_error, pa.int64())).as_py() or 0

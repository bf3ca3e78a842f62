"""Score a file of pairs into a file of scores: streamed, in order, resumable, sharded.

>>> from genrank import Reranker
>>> from genrank.batch import score_file
>>> summary = score_file("pairs.jsonl", "scores.jsonl", Reranker("lightblue/lb-reranker-0.5B-v1.0"))

Chunks of ``chunk_size`` input rows are read, scored and appended to the output, so memory stays
flat; the next chunk's prompts are built while the engine scores the current one. Each chunk is
on disk (fsync'd) before the manifest beside the output (``OUTPUT.genrank.json``, see
``genrank.manifest``) counts it as done. Rerunning on the same output resumes after the rows done,
if the settings that decide the scores (the engine kind and scoring method among them) and the
input are the same (the engine's concurrency may change); anything else is refused before a file
is touched. ``shard=(i, n)`` scores chunks i, i+n, i+2n, ... so that n machines split one input
without overlap.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from . import io
from .errors import InputError, ResumeError
from .io import Fields, InputRow, Progress
from .manifest import Manifest, manifest_path
from .reranker import Reranker, ScoredPairs, prefetch


@dataclass
class BatchSummary:
    """What a run did: pairs scored (failed included), failed, skipped (done by an earlier run), seconds."""

    pairs: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        skipped = f", {self.skipped:,} already done" if self.skipped else ""
        return (f"{self.pairs:,} pairs scored, {self.failed:,} failed{skipped} "
                f"in {self.seconds:.1f} s ({self.pairs_per_second:,.0f} pairs/s)")


def score_file(input_path: str | os.PathLike, output_path: str | os.PathLike, reranker: Reranker, *,
               format: str | None = None, query_field: str = "query", document_field: str = "document",
               id_field: str = "id", documents_field: str | None = None, chunk_size: int = 1024,
               shard: tuple[int, int] | None = None, overwrite: bool = False,
               show_progress: bool = False) -> BatchSummary:
    """Score every pair of ``input_path`` (JSONL, CSV or Parquet) into ``output_path`` (same format).

    Each output row has the input row's ``id`` (its 0-based row number when it has none),
    ``score``, ``label_mass``, ``probability`` when the Reranker has a calibration, and ``error``
    (null unless the row could not be scored; JSONL writes it only then). With ``documents_field``
    each input row is one query with a list of documents, and ``score``/``label_mass``
    (``probability``) are lists in document order. A row that fails
    (bad field, engine error) is written with its error and the run goes on; an exception (an
    engine that cannot score at all) stops the run with the rows done so far kept for a rerun.

    An existing output is resumed; one from other settings or another input, one without a
    manifest, or a file that is not genrank output raises a ValueError and is left as it was.
    ``overwrite=True`` starts over instead: the old output, its parts and its manifest are
    removed when the first chunk is written.
    """
    fmt = io.detect_format(input_path, format)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size!r}")
    index, count = shard or (0, 1)
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise InputError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise InputError(f"the output {str(output_path)!r} is the input; choose another output")
    fields = Fields(query_field, document_field, id_field, documents_field)
    writer = io.open_writer(output_path, fmt, list_mode=documents_field is not None,
                            probability=reranker.calibration is not None)
    manifest = Manifest.for_run(reranker, input_path, fmt, fields, chunk_size, (index, count))
    done_ids: Iterator[Any] = iter(())
    if not overwrite and writer.exists():
        done_ids = _resume(writer, manifest, output_path)  # reads only: a refusal leaves everything as it was
    manifest, done = manifest.with_progress(writer.progress), writer.progress.rows
    rows = io.read_rows(input_path, fmt, fields)
    summary = BatchSummary()
    start = time.perf_counter()
    total = io.count_rows(input_path, fmt) if show_progress else None
    if total is not None and count > 1:  # the rows of this shard's chunks
        total = sum(min(chunk_size, total - s) for s in range(index * chunk_size, total, count * chunk_size))
    bar = tqdm(total=total, unit="query" if documents_field else "pair", disable=not show_progress, dynamic_ncols=True)
    started = False

    def commit(step: Callable[[], Progress]) -> None:
        """Run a writer step, then record its durable progress; the first step starts the output."""
        nonlocal manifest, started
        if not started:  # every check has passed: now files may change
            if overwrite:
                writer.remove()
            manifest.save(output_path)
            started = True
        manifest = manifest.with_progress(step())
        manifest.save(output_path)

    def pending() -> Iterator[tuple[list[InputRow], list[InputRow]]]:
        """(chunk, rows still to score) of this shard, checking the resumed prefix against the input."""
        nonlocal done
        for chunk in itertools.islice(_chunks(rows, chunk_size), index, None, count):
            skip = min(done, len(chunk))
            for row, row_id in zip(chunk[:skip], done_ids):
                if row_id != row.id and str(row_id) != str(row.id):
                    raise ResumeError(f"{str(output_path)!r} does not continue {str(input_path)!r}: it has id "
                                     f"{row_id!r} where the input has {row.id!r}; start over with --overwrite "
                                     "or choose another output")
                summary.skipped += row.pairs
            done -= skip
            yield chunk, chunk[skip:]

    def prepare(work: tuple[list[InputRow], list[InputRow]]):
        chunk, todo = work
        pairs = _pairs(todo)
        return (chunk, todo), reranker.prepare(pairs) if pairs else None

    try:
        # The next chunk is read and its prompts built while the engine scores this one; a remote
        # engine gets several chunks at once, so a slow pair does not stall the chunks after it.
        # Every resumed row is checked before the first write (they come first).
        for (chunk, todo), result in reranker.score_stream(prefetch(prepare, pending())):
            if todo:
                records, pairs, failed = _records(todo, result, documents_field is not None,
                                                  reranker.calibration is not None)
                commit(functools.partial(writer.write, records))
                summary.pairs += pairs
                summary.failed += failed
            bar.update(len(chunk))
        if done:
            raise ResumeError(f"{str(output_path)!r} has {done} more rows than this input"
                             f"{' shard' if count > 1 else ''}; start over with --overwrite or choose another output")
        commit(writer.finish)
    except BaseException:
        writer.close()  # as it stands: the manifest counts only what is on disk, so a rerun resumes
        raise
    finally:
        bar.close()
    writer.cleanup()
    summary.seconds = time.perf_counter() - start
    return summary


def _resume(writer: io.Writer, run: Manifest, output_path: str | os.PathLike) -> Iterator[Any]:
    """The ids of the rows an earlier run did, if this run may continue it; else a ValueError saying why."""
    earlier = Manifest.load(output_path)
    if earlier is None:
        writer.check_is_output()
        raise ResumeError(f"{str(output_path)!r} has no manifest ({manifest_path(output_path).name}): it was written "
                         "by an older genrank or its manifest was removed, so its settings and input cannot be "
                         "checked; start over with --overwrite or choose another output")
    changes = earlier.differences(run)
    if changes:
        raise ResumeError(f"{str(output_path)!r} cannot be resumed by this run: {'; '.join(changes)}. Rerun with "
                         "the earlier settings and input, start over with --overwrite, or choose another output")
    return writer.resume(earlier.progress)


def score_rows(reranker: Reranker, rows: list[InputRow], list_mode: bool) -> list[dict[str, Any]]:
    """Output records of validated rows (one ``score_details`` call)."""
    pairs = _pairs(rows)
    return _records(rows, reranker.score_details(pairs) if pairs else None, list_mode,
                    reranker.calibration is not None)[0]


def _pairs(rows: list[InputRow]) -> list[tuple[str, str]]:
    return [(row.query, doc) for row in rows if row.error is None for doc in row.documents]


def _records(rows: list[InputRow], result: ScoredPairs | None, list_mode: bool,
             calibrated: bool = False) -> tuple[list[dict[str, Any]], int, int]:
    """Output records of ``rows`` from the scores of their pairs, with pair and failure counts
    (``calibrated``: with the probability column).

    A row that could not be read counts as one failed pair (its documents are unknown).
    """
    records, scored, failed = [], 0, 0
    for row in rows:
        if row.error is not None:
            records.append(io.output_record(row.id, None, None, row.error, *([None] if calibrated else [])))
            failed += 1
            continue
        span = range(scored, scored + len(row.documents))
        scored = span.stop
        score = result.score[span.start:span.stop].tolist() if span else []
        mass = result.label_mass[span.start:span.stop].tolist() if span else []
        probability = result.probability[span.start:span.stop].tolist() if span and calibrated else []
        errors = {i - span.start: result.errors[i] for i in span if i in result.errors}
        failed += len(errors)
        if list_mode:
            error = "; ".join(f"document {i}: {why}" for i, why in errors.items()) or None
            records.append(io.output_record(row.id, score, mass, error, *([probability] if calibrated else [])))
        else:
            records.append(io.output_record(row.id, score[0], mass[0], errors.get(0),
                                            *(probability[:1] if calibrated else [])))
    return records, scored + sum(row.error is not None for row in rows), failed


def _chunks(rows: Iterator[InputRow], size: int) -> Iterator[list[InputRow]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk

"""Streaming readers and resumable writers for JSONL, CSV and Parquet files of pairs and scores.

Readers yield one ``InputRow`` per input row, already validated: a row with a missing, null or
non-string field carries an ``error`` naming the field and its line (JSONL, CSV) or row (Parquet)
number instead of texts. Writers append rows in order, each chunk fsync'd before it counts, and
resume after the rows an earlier (possibly killed) run recorded as done (``Progress``), dropping
whatever lies past them. Parquet output goes to part files renamed into place one chunk at a time
(``OUTPUT.parts/``), merged into OUTPUT at the end, because a Parquet file killed before its footer
is written cannot be read at all.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any, BinaryIO

from .errors import InputError, MissingExtra, ResumeError
from .validation import check_text

# A cell may hold a whole list of documents (JSON) or a long server error; the default is 128 KiB.
csv.field_size_limit(2**31 - 1)

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
OUTPUT_COLUMNS = ("id", "score", "label_mass", "error")
CALIBRATED_COLUMNS = ("id", "score", "label_mass", "probability", "error")  # with a calibration


def detect_format(path: str | os.PathLike, format: str | None = None) -> str:
    """``format`` if given, else the format named by the file's extension."""
    if format is not None:
        if format not in set(FORMATS.values()):
            raise InputError(f"format must be one of jsonl, csv, parquet, got {format!r}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"cannot tell the format of {str(path)!r} from its extension; "
                         "use .jsonl, .csv or .parquet, or give the format")
    return FORMATS[suffix]


@dataclass(frozen=True)
class Fields:
    """Input field names. With ``documents`` set, each row is one query with a list of documents."""

    query: str = "query"
    document: str = "document"
    id: str = "id"
    documents: str | None = None


@dataclass
class InputRow:
    """One input row: its id and texts, or why it cannot be scored."""

    id: Any
    query: str | None = None
    documents: list[str] | None = None  # one document in pair mode
    error: str | None = None

    @property
    def pairs(self) -> int:
        return len(self.documents) if self.documents is not None else 1


def parse_row(record: Any, index: int | None, where: str, fields: Fields) -> InputRow:
    """Validate one decoded record (a dict; anything else is an error) into an InputRow.

    The id is the record's id field, or ``index`` (the 0-based row number) when it has none;
    ``where`` ("line 7", "row 7") starts each error message.
    """
    if not isinstance(record, dict):
        return InputRow(index, error=f"{where}: expected an object with fields, got {type(record).__name__}")
    row_id = record.get(fields.id, index)
    try:
        query = check_text(_field(record, fields.query, where), f"{where}: field {fields.query!r}", allow_empty=False)
        if fields.documents is None:
            docs = [check_text(_field(record, fields.document, where), f"{where}: field {fields.document!r}")]
        else:
            value = _field(record, fields.documents, where)
            if isinstance(value, str):  # CSV cells hold the list as JSON
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise InputError(f"{where}: field {fields.documents!r} must be a JSON list of strings, "
                                     f"got {value!r:.80}") from None
            if not isinstance(value, (list, tuple)):
                raise InputError(f"{where}: field {fields.documents!r} must be a list of strings, "
                                 f"got {type(value).__name__} {value!r:.80}")
            docs = [check_text(d, f"{where}: field {fields.documents!r} item {n}") for n, d in enumerate(value)]
    except ValueError as e:
        return InputRow(row_id, error=str(e))
    return InputRow(row_id, query, docs)


def _field(record: dict, name: str, where: str) -> Any:
    value = record.get(name)
    if value is None:
        raise InputError(f"{where}: field {name!r} is {'null' if name in record else 'missing'}")
    return value


def output_columns(probability: bool) -> tuple[str, ...]:
    """The output's columns: with ``probability`` (a calibrated run) the probability column too."""
    return CALIBRATED_COLUMNS if probability else OUTPUT_COLUMNS


def output_record(row_id: Any, score: Any, label_mass: Any, error: str | None,
                  probability: Any = ...) -> dict[str, Any]:
    """One output row; NaN (a failed pair) becomes None. ``probability`` (a calibrated run's, None
    included) adds the probability column; left out, the row has none."""
    record = {"id": row_id, "score": _none_if_nan(score), "label_mass": _none_if_nan(label_mass)}
    if probability is not ...:
        record["probability"] = _none_if_nan(probability)
    record["error"] = error
    return record


def _none_if_nan(value: Any) -> Any:
    if isinstance(value, list):
        return [_none_if_nan(v) for v in value]
    return None if value is None or math.isnan(value) else float(value)


def _pyarrow():
    """``pyarrow`` and ``pyarrow.parquet``, or an ImportError that says what to install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingExtra(f"Parquet files need pyarrow ({e}); install it with: pip install pyarrow") from e
    return pa, pq


# -- readers --------------------------------------------------------------------------------


def check_columns(source: str, names: list[str], fields: Fields, *, need_id: bool = False) -> None:
    """A ValueError naming ``source`` and its columns if it lacks the query or document(s) (or id) column."""
    wanted = [fields.query, fields.documents or fields.document] + ([fields.id] if need_id else [])
    missing = [n for n in wanted if n not in names]
    if missing:
        raise InputError(f"{source} has no column {missing[0]!r} (columns: {', '.join(names) or 'none'})")


def read_rows(path: str | os.PathLike, format: str, fields: Fields) -> Iterator[InputRow]:
    """The rows of an input file, in order, streamed."""
    if format == "jsonl":
        return _read_jsonl(Path(path), fields)
    if format == "csv":
        return _read_csv(Path(path), fields)
    return _read_parquet(Path(path), fields)


def count_rows(path: str | os.PathLike, format: str) -> int:
    """The number of input rows, cheaply: Parquet metadata, else a count of line ends (CSV: approximate)."""
    if format == "parquet":
        _, pq = _pyarrow()

        return pq.ParquetFile(path).metadata.num_rows
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return lines - (format == "csv")


def _read_jsonl(path: Path, fields: Fields) -> Iterator[InputRow]:
    index = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bad bytes
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                yield InputRow(index, error=f"line {line_no}: not valid JSON ({msg})")
            else:
                yield parse_row(record, index, f"line {line_no}", fields)
            index += 1


def _read_csv(path: Path, fields: Fields) -> Iterator[InputRow]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets start with a BOM
        reader = csv.DictReader(f)
        check_columns(repr(str(path)), reader.fieldnames or [], fields)
        for index, record in enumerate(reader):
            # DictReader fills the fields a short row lacks with None (and puts extra ones under None)
            record = {k: v for k, v in record.items() if k is not None and v is not None}
            yield parse_row(record, index, f"line {reader.line_num}", fields)


def _read_parquet(path: Path, fields: Fields) -> Iterator[InputRow]:
    _, pq = _pyarrow()

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    check_columns(repr(str(path)), names, fields)
    columns = [fields.query, fields.documents or fields.document] + ([fields.id] if fields.id in names else [])
    index = 0
    for batch in pf.iter_batches(batch_size=4096, columns=columns):
        for record in batch.to_pylist():
            yield parse_row(record, index, f"row {index + 1}", fields)
            index += 1


# -- writers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """How much of an output is done and on disk: ``rows`` rows, held by its first ``bytes`` bytes
    (JSONL, CSV; the header included) or its first ``parts`` part files (Parquet; ``merged`` once
    OUTPUT holds them all)."""

    rows: int = 0
    bytes: int = 0
    parts: int = 0
    merged: bool = False


class Writer(ABC):
    """Appends output rows in order; a chunk counts once it is on disk.

    ``exists()``, ``check_is_output()`` and ``resume()`` only read. The first ``write()`` or
    ``finish()`` drops whatever lies past the resumed progress (a torn or unrecorded tail);
    ``write()`` returns the new progress once its rows are fsync'd; ``finish()`` completes the
    output; ``cleanup()`` removes what the finished output no longer needs.
    """

    def __init__(self, path: str | os.PathLike, list_mode: bool, probability: bool = False):
        self.path = Path(path)
        self.list_mode = list_mode
        self.columns = output_columns(probability)
        self.progress = Progress()
        self._file: BinaryIO | None = None

    def exists(self) -> bool:
        """Whether an earlier run left output here (an empty file is none)."""
        return self.path.exists() and self.path.stat().st_size > 0

    @abstractmethod
    def check_is_output(self) -> None:
        """A ValueError naming what is wrong if the file at the output path is not genrank output."""

    @abstractmethod
    def resume(self, progress: Progress) -> Iterator[Any]:
        """Continue after ``progress``: the ids of the rows it covers, read lazily (a ValueError if
        the output does not hold them)."""

    @abstractmethod
    def write(self, records: list[dict[str, Any]]) -> Progress:
        """Append rows (``output_record`` dicts); returns the progress once they are on disk."""

    def finish(self) -> Progress:
        """Complete the output (an empty one for an empty input) and return its progress."""
        self._start()
        self.close()
        return self.progress

    def cleanup(self) -> None:
        """Remove what the finished output no longer needs, once its progress is recorded."""

    def close(self) -> None:
        """Close the output file, as it stands (an interrupted run: resumable)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """Remove the output and what a run left beside it, to start over."""
        self.path.unlink(missing_ok=True)

    def _start(self) -> None:
        """Open the output for appending after the resumed progress, dropping anything past it."""
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - open until finish() or close()
            self._file.truncate(self.progress.bytes)

    def _append(self, data: bytes, rows: int) -> Progress:
        self._start()
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.progress = Progress(self.progress.rows + rows, self.progress.bytes + len(data))
        return self.progress


def fsync_dir(path: Path) -> None:
    """Make a file created or renamed in the folder ``path`` durable (POSIX; elsewhere a no-op)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _changed(path: Path, what: str) -> ValueError:
    return ValueError(f"{str(path)!r} {what}: it was changed after genrank wrote it; start over with --overwrite "
                      "or choose another output")


def _check_size(path: Path, progress: Progress) -> None:
    size = path.stat().st_size
    if size < progress.bytes:
        raise _changed(path, f"is {size:,} bytes, shorter than the {progress.bytes:,} its manifest records as done")


def _lines(path: Path, progress: Progress) -> Iterator[bytes]:
    """The lines of the first ``progress.bytes`` bytes of ``path``."""
    left = progress.bytes
    with open(path, "rb") as f:
        while left > 0:
            line = f.readline(left)
            if not line:  # shrunk since its size was checked
                return
            left -= len(line)
            yield line


class JsonlWriter(Writer):
    def check_is_output(self) -> None:
        with open(self.path, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.endswith(b"\n") and not _is_output_line(line):
                    raise ResumeError(f"{str(self.path)!r} is not genrank output: line {n} is {line[:100]!r}; "
                                     "remove it or choose another output")

    def resume(self, progress: Progress) -> Iterator[Any]:
        _check_size(self.path, progress)
        self.progress = progress
        return _jsonl_ids(self.path, progress)

    def write(self, records: list[dict[str, Any]]) -> Progress:
        lines = []
        for r in records:
            if r["error"] is None:
                del r["error"]
            lines.append(json.dumps(r, ensure_ascii=False))
        # A lone surrogate (from a JSON input's id) becomes its JSON escape, so it reads back the same.
        return self._append(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"), len(records))


def _jsonl_ids(path: Path, progress: Progress) -> Iterator[Any]:
    lines = _lines(path, progress)
    for n in range(1, progress.rows + 1):
        line = next(lines, b"")
        if not (line.endswith(b"\n") and _is_output_line(line)):
            raise _changed(path, f"does not hold the {progress.rows:,} rows its manifest records: line {n} is "
                                 f"{line[:100]!r}")
        yield json.loads(line)["id"]


def _is_output_line(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "id" in record and record.keys() <= set(CALIBRATED_COLUMNS)


class CsvWriter(Writer):
    def check_is_output(self) -> None:
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
        if header not in (list(OUTPUT_COLUMNS), list(CALIBRATED_COLUMNS)):
            raise ResumeError(f"{str(self.path)!r} is not genrank output: its header is {header!r:.100}, "
                              f"expected {','.join(self.columns)}; remove it or choose another output")

    def resume(self, progress: Progress) -> Iterator[Any]:
        _check_size(self.path, progress)
        self.progress = progress
        return _csv_ids(self.path, progress, self.columns)

    def write(self, records: list[dict[str, Any]]) -> Progress:
        rows = []
        for r in records:
            cells = {key: r.get(key) for key in self.columns}
            if self.list_mode and cells["score"] is not None:
                for key in set(self.columns) - {"id", "error"}:
                    cells[key] = json.dumps(cells[key])
            rows.append(tuple("" if value is None else value for value in cells.values()))
        return self._append(_csv_bytes(rows), len(records))

    def _start(self) -> None:
        if self._file is None:
            super()._start()
            if self.progress.bytes == 0:
                self._append(_csv_bytes([self.columns]), 0)


def _csv_bytes(rows: list[tuple[Any, ...]]) -> bytes:
    text = StringIO(newline="")
    csv.writer(text).writerows(rows)
    return text.getvalue().encode("utf-8")


def _csv_ids(path: Path, progress: Progress, columns: tuple[str, ...]) -> Iterator[str]:
    records = csv.reader((line.decode("utf-8", errors="replace") for line in _lines(path, progress)), strict=True)
    try:
        header = next(records, None)
        if progress.bytes and header != list(columns):
            raise _changed(path, f"does not start with the header {','.join(columns)}")
        for n in range(1, progress.rows + 1):
            record = next(records, None)
            if record is None or len(record) != len(columns):
                raise _changed(path, f"does not hold the {progress.rows:,} rows its manifest records: "
                                     f"row {n} is {record!r:.100}")
            yield record[0]
    except csv.Error as e:
        raise _changed(path, f"is not valid CSV ({e})") from None


class ParquetWriter(Writer):
    """Each chunk is a part file ``OUTPUT.parts/part-NNNNNN.parquet``, renamed into place when
    complete; ``finish()`` merges the parts into OUTPUT (atomically) and ``cleanup()`` removes them."""

    def __init__(self, path: str | os.PathLike, list_mode: bool, probability: bool = False):
        super().__init__(path, list_mode, probability)
        self.parts = self.path.with_name(self.path.name + ".parts")
        self._id_type = None
        self._started = False

    def exists(self) -> bool:
        return super().exists() or self.parts.exists()

    def check_is_output(self) -> None:
        _, pq = _pyarrow()

        files = [self.path] if self.path.exists() else sorted(self.parts.glob("part-*.parquet"))
        for path in files[:1]:
            try:
                names = pq.read_schema(path).names
            except Exception as e:  # pyarrow.ArrowInvalid and kin: not a Parquet file
                raise ResumeError(f"{str(path)!r} is not genrank output: {e}; remove it or choose another "
                                 "output") from None
            if names not in (list(OUTPUT_COLUMNS), list(CALIBRATED_COLUMNS)):
                raise ResumeError(f"{str(path)!r} is not genrank output: its columns are {names}, expected "
                                  f"{list(self.columns)}; remove it or choose another output")

    def resume(self, progress: Progress) -> Iterator[Any]:
        _, pq = _pyarrow()

        files = [self.path] if progress.merged else [self._part(n) for n in range(progress.parts)]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise _changed(self.path, f"lacks {missing[0]!r}, which its manifest records as done")
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        if rows != progress.rows:
            raise _changed(self.path, f"holds {rows:,} rows where its manifest records {progress.rows:,}")
        self._id_type = pq.read_schema(files[0]).field("id").type if files else None
        self.progress = progress
        return (i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist())

    def write(self, records: list[dict[str, Any]]) -> Progress:
        pa, pq = _pyarrow()

        self._start()
        table = pa.Table.from_pylist(records, schema=self._schema(records))
        part = self._part(self.progress.parts)
        tmp = part.with_name(part.name + ".tmp")
        pq.write_table(table, tmp)
        _fsync_file(tmp)
        os.replace(tmp, part)
        fsync_dir(self.parts)
        self.progress = Progress(self.progress.rows + len(records), parts=self.progress.parts + 1)
        return self.progress

    def finish(self) -> Progress:
        _, pq = _pyarrow()

        if self.progress.merged:  # finished by an earlier run
            return self.progress
        tmp = self.path.with_name(self.path.name + ".tmp")
        schema = self._schema([])
        with pq.ParquetWriter(tmp, schema) as writer:
            for n in range(self.progress.parts):
                writer.write_table(pq.read_table(self._part(n)).cast(schema))
        _fsync_file(tmp)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self.progress = dataclasses.replace(self.progress, merged=True)
        return self.progress

    def cleanup(self) -> None:
        if self.parts.exists():
            shutil.rmtree(self.parts)

    def remove(self) -> None:
        super().remove()
        self.cleanup()

    def _start(self) -> None:
        """Before the first part: drop parts and temporary files past the resumed progress."""
        if self._started:
            return
        if self.progress.merged:
            raise InputError(f"{str(self.path)!r} is finished; there are no rows left to add to it")
        self.parts.mkdir(exist_ok=True)
        kept = {self._part(n).name for n in range(self.progress.parts)}
        for stale in self.parts.iterdir():
            if stale.name not in kept:
                stale.unlink()
        self._started = True

    def _part(self, n: int) -> Path:
        return self.parts / f"part-{n:06d}.parquet"

    def _schema(self, records: list[dict[str, Any]]):
        """Output schema; the id type is the first chunk's (a later type only replaces all-null ids)."""
        pa, _ = _pyarrow()

        if self._id_type is None or pa.types.is_null(self._id_type):
            self._id_type = pa.array([r["id"] for r in records]).type if records else pa.int64()
        return output_schema(self._id_type, self.list_mode, probability="probability" in self.columns)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def output_schema(id_type: Any, list_mode: bool, probability: bool = False):
    """The Arrow schema of output rows: ``id`` of ``id_type``, scores (lists in list mode), with
    ``probability`` its column, error."""
    pa, _ = _pyarrow()

    value = pa.list_(pa.float64()) if list_mode else pa.float64()
    return pa.schema([("id", id_type), ("score", value), ("label_mass", value),
                      *([("probability", value)] if probability else []), ("error", pa.string())])


WRITERS: dict[str, type[Writer]] = {"jsonl": JsonlWriter, "csv": CsvWriter, "parquet": ParquetWriter}


def open_writer(path: str | os.PathLike, format: str, list_mode: bool, probability: bool = False) -> Writer:
    return WRITERS[format](path, list_mode, probability)

"""Streaming readers and resumable writers for JSONL, CSV and Parquet files of pairs and scores.

Readers yield one ``InputRow`` per input row, already validated: a row with a missing, null or
non-string field carries an ``error`` naming the field and its line (JSONL, CSV) or row (Parquet)
number instead of texts. Writers append rows in order and, on ``resume()``, find the rows an
earlier (possibly killed) run completed and drop a torn tail. Parquet output goes to part files
renamed into place one chunk at a time (``OUTPUT.parts/``), merged into OUTPUT at the end, because
a Parquet file killed before its footer is written cannot be read at all.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .reranker import check_text

# A cell may hold a whole list of documents (JSON) or a long server error; the default is 128 KiB.
csv.field_size_limit(2**31 - 1)

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
OUTPUT_COLUMNS = ("id", "score", "label_mass", "error")


def detect_format(path: str | os.PathLike, format: str | None = None) -> str:
    """``format`` if given, else the format named by the file's extension."""
    if format is not None:
        if format not in set(FORMATS.values()):
            raise ValueError(f"format must be one of jsonl, csv, parquet, got {format!r}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {str(path)!r} from its extension; "
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
                    raise ValueError(f"{where}: field {fields.documents!r} must be a JSON list of strings, "
                                     f"got {value!r:.80}") from None
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{where}: field {fields.documents!r} must be a list of strings, "
                                 f"got {type(value).__name__} {value!r:.80}")
            docs = [check_text(d, f"{where}: field {fields.documents!r} item {n}") for n, d in enumerate(value)]
    except ValueError as e:
        return InputRow(row_id, error=str(e))
    return InputRow(row_id, query, docs)


def _field(record: dict, name: str, where: str) -> Any:
    value = record.get(name)
    if value is None:
        raise ValueError(f"{where}: field {name!r} is {'null' if name in record else 'missing'}")
    return value


def output_record(row_id: Any, score: Any, label_mass: Any, error: str | None) -> dict[str, Any]:
    """One output row; NaN (a failed pair) becomes None."""
    return {"id": row_id, "score": _none_if_nan(score), "label_mass": _none_if_nan(label_mass), "error": error}


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
        raise ImportError(f"Parquet files need pyarrow ({e}); install it with: pip install pyarrow") from e
    return pa, pq


# -- readers --------------------------------------------------------------------------------


def check_columns(source: str, names: list[str], fields: Fields, *, need_id: bool = False) -> None:
    """A ValueError naming ``source`` and its columns if it lacks the query or document(s) (or id) column."""
    wanted = [fields.query, fields.documents or fields.document] + ([fields.id] if need_id else [])
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(f"{source} has no column {missing[0]!r} (columns: {', '.join(names) or 'none'})")


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


class Writer(ABC):
    """Appends output rows in order; ``resume()`` first, then ``write()`` per chunk, ``finish()`` at the end."""

    def __init__(self, path: str | os.PathLike, list_mode: bool):
        self.path = Path(path)
        self.list_mode = list_mode

    @abstractmethod
    def resume(self) -> tuple[int, Iterator[Any]]:
        """The number of rows an earlier run completed and an iterator over their ids (read lazily).

        A torn last row is removed; the file is then open for appending."""

    @abstractmethod
    def write(self, records: list[dict[str, Any]]) -> None:
        """Append rows (``output_record`` dicts) and make them durable against the process dying."""

    def close(self) -> None:
        """Close the output file, as it stands (an interrupted run: resumable)."""
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def finish(self) -> None:
        """Close the output; it now holds every row written."""
        self.close()


class JsonlWriter(Writer):
    def resume(self) -> tuple[int, Iterator[Any]]:
        count, end = 0, 0
        if self.path.exists():
            with open(self.path, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # a torn last line is redone
                    if not _is_output_line(line):
                        raise ValueError(f"{str(self.path)!r} is not genrank output: line {count + 1} is "
                                         f"{line[:100]!r}; remove it or choose another output")
                    count += 1
                    end += len(line)
            with open(self.path, "r+b") as f:
                f.truncate(end)
        self._file = open(self.path, "ab")  # noqa: SIM115 - open until finish() or close()
        return count, _jsonl_ids(self.path, count)

    def write(self, records: list[dict[str, Any]]) -> None:
        lines = []
        for r in records:
            if r["error"] is None:
                del r["error"]
            lines.append(json.dumps(r, ensure_ascii=False))
        # A lone surrogate (from a JSON input's id) becomes its JSON escape, so it reads back the same.
        self._file.write(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
        self._file.flush()


def _jsonl_ids(path: Path, count: int) -> Iterator[Any]:
    with open(path, "rb") as f:
        for _, line in zip(range(count), f):
            yield json.loads(line)["id"]


def _is_output_line(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "id" in record and record.keys() <= set(OUTPUT_COLUMNS)


class CsvWriter(Writer):
    def resume(self) -> tuple[int, Iterator[Any]]:
        count, end = -1, 0  # -1: no header yet
        if self.path.exists():
            for record, record_end in _csv_records(self.path):
                if count < 0 and record != list(OUTPUT_COLUMNS):
                    raise ValueError(f"{str(self.path)!r} is not genrank output: its header is {record!r:.100}, "
                                     f"expected {','.join(OUTPUT_COLUMNS)}; remove it or choose another output")
                if len(record) != len(OUTPUT_COLUMNS):
                    break
                count += 1
                end = record_end
            with open(self.path, "r+b") as f:
                f.truncate(end)
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - open until finish() or close()
        self._csv = csv.writer(self._file)
        if count < 0:
            self._csv.writerow(OUTPUT_COLUMNS)
            count = 0
        return count, _csv_ids(self.path, count)

    def write(self, records: list[dict[str, Any]]) -> None:
        rows = []
        for r in records:
            score, mass = r["score"], r["label_mass"]
            if self.list_mode and score is not None:
                score, mass = json.dumps(score), json.dumps(mass)
            rows.append((r["id"], "" if score is None else score, "" if mass is None else mass, r["error"] or ""))
        self._csv.writerows(rows)
        self._file.flush()


def _csv_records(path: Path) -> Iterator[tuple[list[str], int]]:
    """Complete CSV records with the byte offset where each ends; stops at a torn last record."""
    state = {"end": 0, "torn": False}

    def lines() -> Iterator[str]:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    state["torn"] = True
                    return
                state["end"] += len(line)
                yield line.decode("utf-8", errors="replace")

    try:
        for record in csv.reader(lines(), strict=True):
            yield record, state["end"]
    except csv.Error:  # a record cut inside a quoted field (strict: not read as a shorter field)
        return


def _csv_ids(path: Path, count: int) -> Iterator[str]:
    records = _csv_records(path)
    next(records, None)  # header
    for _, (record, _end) in zip(range(count), records):
        yield record[0]
    records.close()


class ParquetWriter(Writer):
    """Each chunk is a part file ``OUTPUT.parts/part-NNNNNN.parquet``, renamed into place when
    complete; ``finish()`` merges the parts into OUTPUT (atomically) and removes them."""

    def __init__(self, path: str | os.PathLike, list_mode: bool):
        super().__init__(path, list_mode)
        self.parts = self.path.with_name(self.path.name + ".parts")

    def resume(self) -> tuple[int, Iterator[Any]]:
        _, pq = _pyarrow()

        if self.path.exists() and self.parts.exists():  # killed in finish(), after OUTPUT was complete
            shutil.rmtree(self.parts)
        if self.path.exists():  # a finished earlier run: continue after it
            names = pq.read_schema(self.path).names
            if names != list(OUTPUT_COLUMNS):
                raise ValueError(f"{str(self.path)!r} is not genrank output: its columns are {names}, expected "
                                 f"{list(OUTPUT_COLUMNS)}; remove it or choose another output")
            self.parts.mkdir()
            os.replace(self.path, self._part(0))
        self.parts.mkdir(exist_ok=True)
        for stale in self.parts.glob("*.tmp"):
            stale.unlink()
        self._files = sorted(self.parts.glob("part-*.parquet"))
        self._id_type = pq.read_schema(self._files[0]).field("id").type if self._files else None
        count = sum(pq.ParquetFile(p).metadata.num_rows for p in self._files)
        return count, (i for p in list(self._files) for i in pq.read_table(p, columns=["id"]).column("id").to_pylist())

    def write(self, records: list[dict[str, Any]]) -> None:
        pa, pq = _pyarrow()

        table = pa.Table.from_pylist(records, schema=self._schema(records))
        part = self._part(len(self._files))
        tmp = part.with_name(part.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, part)
        self._files.append(part)

    def finish(self) -> None:
        _, pq = _pyarrow()

        tmp = self.path.with_name(self.path.name + ".tmp")
        schema = self._schema([])
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in self._files:
                writer.write_table(pq.read_table(part).cast(schema))
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts)

    def _part(self, n: int) -> Path:
        return self.parts / f"part-{n:06d}.parquet"

    def _schema(self, records: list[dict[str, Any]]):
        """Output schema; the id type is the first chunk's (a later type only replaces all-null ids)."""
        pa, _ = _pyarrow()

        if self._id_type is None or pa.types.is_null(self._id_type):
            self._id_type = pa.array([r["id"] for r in records]).type if records else pa.int64()
        return output_schema(self._id_type, self.list_mode)


def output_schema(id_type: Any, list_mode: bool):
    """The Arrow schema of output rows: ``id`` of ``id_type``, scores (lists in list mode), error."""
    pa, _ = _pyarrow()

    value = pa.list_(pa.float64()) if list_mode else pa.float64()
    return pa.schema([("id", id_type), ("score", value), ("label_mass", value), ("error", pa.string())])


WRITERS: dict[str, type[Writer]] = {"jsonl": JsonlWriter, "csv": CsvWriter, "parquet": ParquetWriter}


def open_writer(path: str | os.PathLike, format: str, list_mode: bool) -> Writer:
    return WRITERS[format](path, list_mode)

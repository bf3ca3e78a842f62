"""The manifest beside a batch output: the run that writes it, its input, and how much of it is done.

``OUTPUT.genrank.json`` records the settings that decide the scores (model, engine kind and its
scoring method, template, max_length, normalize, instruction, long_documents, calibration) and which
rows go where (fields, format, shard and, for a shard, chunk_size), a fingerprint of the input, and
the extent of the output known to be on disk.
A rerun resumes only when its settings and input match, so one output never mixes scores of two
runs; ``Manifest.save`` replaces the file atomically, so it always describes durable rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import io
from .errors import InputError, ResumeError
from .io import Fields, Progress
from .templates import template_sha256

if TYPE_CHECKING:
    from .engines import Engine
    from .reranker import Reranker

SUFFIX = ".genrank.json"
VERSION = 1
SAMPLE_BYTES = 1 << 20  # hashed at each end of the input

# Setting -> how a message names it (the command-line flag where there is one).
_NAMES = {"model": "--model", "engine": "--engine", "scoring_method": "the engine's scoring method",
          "template": "--template", "max_length": "--max-length",
          "normalize": "label normalisation (off with --card-formula)", "instruction": "--instruction",
          "long_documents": "--long-documents", "calibration": "--calibration", "format": "--format",
          "query_field": "--query-field", "document_field": "--document-field", "id_field": "--id-field",
          "documents_field": "--documents-field", "shard": "--shard",
          "chunk_size": "--chunk-size (it decides a shard's rows)"}


def manifest_path(output_path: str | os.PathLike) -> Path:
    """Where the manifest of ``output_path`` lives: ``OUTPUT.genrank.json``."""
    path = Path(output_path)
    return path.with_name(path.name + SUFFIX)


@dataclass(frozen=True)
class Manifest:
    """One run's settings and input fingerprint, and the output's durable ``progress``."""

    settings: dict[str, Any]
    input: dict[str, Any]
    progress: Progress = Progress()

    @classmethod
    def for_run(cls, reranker: Reranker, input_path: str | os.PathLike, format: str, fields: Fields,
                chunk_size: int, shard: tuple[int, int], input_fingerprint: dict[str, Any] | None = None) -> Manifest:
        """The manifest a run of ``score_file`` with these arguments writes, before any row is done.

        ``input_fingerprint`` replaces ``fingerprint(input_path, format)`` (an input that is not one local file).
        """
        template = reranker.template
        settings = {
            "model": _model_name(reranker.engine),
            # Engines score the same settings differently (vLLM's pooling renormalises over the labels;
            # top log-probabilities miss labels outside them): a resume keeps both.
            "engine": reranker.engine.kind,
            "scoring_method": reranker.engine.scoring_method,
            "template": {"name": template.name, "sha256": template_sha256(template)},
            "max_length": reranker.builder.max_length,
            "normalize": reranker.normalize,
            "instruction": reranker.instruction,
            "long_documents": reranker.long_documents,
            "calibration": None if reranker.calibration is None else {
                "path": reranker.calibration.source, "sha256": reranker.calibration.digest},
            "format": format,
            "query_field": fields.query,
            "document_field": fields.document,
            "id_field": fields.id,
            "documents_field": fields.documents,
            "shard": f"{shard[0]}/{shard[1]}",
            # Unsharded, any chunk size resumes the same rows; a shard's rows depend on it.
            "chunk_size": chunk_size if shard[1] > 1 else None,
        }
        return cls(settings, input_fingerprint or fingerprint(input_path, format))

    @classmethod
    def load(cls, output_path: str | os.PathLike) -> Manifest | None:
        """The manifest of ``output_path``, None if it has none; a ValueError if it cannot be read."""
        path = manifest_path(output_path)
        try:
            return cls.from_json(path.read_bytes(), str(path))
        except FileNotFoundError:
            return None

    @classmethod
    def from_json(cls, content: bytes, path: str) -> Manifest:
        """The manifest in ``content`` (read from ``path``); a ValueError if it cannot be read."""
        try:
            data = json.loads(content)
            if data["version"] != VERSION:
                raise InputError(f"version {data['version']!r}, this genrank reads version {VERSION}")
            return cls(data["settings"], data["input"], Progress(**data["progress"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ResumeError(f"the manifest {str(path)!r} cannot be read ({type(e).__name__}: {e}); start over "
                             "with --overwrite or choose another output") from None

    def save(self, output_path: str | os.PathLike) -> None:
        """Write the manifest of ``output_path`` atomically and durably (tmp, fsync, rename)."""
        path = manifest_path(output_path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        io.fsync_dir(path.parent)

    def to_json(self) -> bytes:
        """The manifest file's content."""
        data = {"version": VERSION, "settings": self.settings, "input": self.input,
                "progress": dataclasses.asdict(self.progress)}
        return json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8", "backslashreplace")

    def with_progress(self, progress: Progress) -> Manifest:
        return dataclasses.replace(self, progress=progress)

    def differences(self, run: Manifest) -> list[str]:
        """What ``run`` changes from this manifest's run, in words (empty: it may resume this output)."""
        changed = [_input_change(self.input, run.input)] if _input_key(self.input) != _input_key(run.input) else []
        for key, name in _NAMES.items():
            old, new = self.settings.get(key), run.settings.get(key)
            if old == new:
                continue
            if old is None and key in ("engine", "scoring_method"):
                changed.append(f"{name} was not recorded (an older genrank wrote the manifest), now {_shown(new)}")
            elif key == "template" and old and new and old["name"] == new["name"]:
                changed.append(f"the template {new['name']!r} was edited (content sha256 {old['sha256'][:12]}..., "
                               f"now {new['sha256'][:12]}...)")
            elif key == "template":
                changed.append(f"--template was {_shown(old and old['name'])}, now {_shown(new['name'])}")
            elif key == "calibration" and (old or {}).get("sha256") == (new or {}).get("sha256"):
                continue  # the same map, read from another path
            elif key == "calibration":
                changed.append(f"{name} was {_calibration(old)}, now {_calibration(new)}")
            elif key == "normalize":
                changed.append(f"{name} was {'on' if old else 'off'}, now {'on' if new else 'off'}")
            elif key == "shard":
                changed.append(f"{name} was {old}, now {new}")
            else:
                changed.append(f"{name} was {_shown(old)}, now {_shown(new)}")
        return changed


def fingerprint(path: str | os.PathLike, format: str) -> dict[str, Any]:
    """The input's size, SHA-256 of its first and last MiB, and its row count where that is free (Parquet).

    Two reads of a MiB whatever the input's size: it tells another file, rows added or removed,
    and a regenerated file; a same-size edit inside the middle is left to the id check.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(SAMPLE_BYTES)).hexdigest()
        f.seek(max(size - SAMPLE_BYTES, 0))
        tail = hashlib.sha256(f.read(SAMPLE_BYTES)).hexdigest()
    rows = io.count_rows(path, format) if format == "parquet" else None
    return {"path": os.path.abspath(path), "size": size, "head_sha256": head, "tail_sha256": tail, "rows": rows}


def _model_name(engine: Engine) -> str | None:
    """The engine's model name; a local directory as its real path, so ./m and /abs/m are one model."""
    name = engine.model_name
    return os.path.realpath(name) if isinstance(name, str) and os.path.isdir(name) else name


def _input_key(fp: dict[str, Any]) -> tuple:
    return fp.get("size"), fp.get("head_sha256"), fp.get("tail_sha256"), fp.get("rows")


def _input_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    what = []
    if old.get("size") != new.get("size"):
        what.append(f"its size was {_count(old.get('size'))} bytes, now {_count(new.get('size'))}")
    if old.get("rows") != new.get("rows"):
        what.append(f"it had {_count(old.get('rows'))} rows, now {_count(new.get('rows'))}")
    if not what:
        whole = (old.get("size") or 0) <= SAMPLE_BYTES
        if whole or old.get("head_sha256") != new.get("head_sha256"):
            what.append("its content differs" if whole else "its first MiB differs")
        if not whole and old.get("tail_sha256") != new.get("tail_sha256"):
            what.append("its last MiB differs")
    source = "" if old.get("path") == new.get("path") else f" (the output was written from {old.get('path')!r})"
    return f"the input changed{source}: {', '.join(what)}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown"


def _calibration(value: dict[str, Any] | None) -> str:
    return "not set" if value is None else f"{value.get('path')!r} (sha256 {str(value.get('sha256'))[:12]}...)"


def _shown(value: Any) -> str:
    return "not set" if value is None else repr(value)

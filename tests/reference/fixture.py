"""What the reference-fixture scripts share: the tiny model they run on, its fingerprint, and the file
they write. Standard library only, so that it runs in the authors' own environment."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pathlib
import platform
import shlex
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for tiny_model

import tiny_model  # noqa: E402, F401  (re-exported for the make_*_fixture scripts)

LONG_TEXT = ("The library opens at nine in the morning and closes at six in the evening. "
             "The train to Chicago leaves from platform four at half past eight. ")


def model_fingerprint(model_dir: pathlib.Path) -> dict[str, str]:
    """sha256 of each file of a model directory: the test rebuilds the model and checks they match."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model_dir.iterdir()) if p.is_file()}


def versions(*packages: str) -> dict[str, str]:
    return {"python": platform.python_version(), **{p: importlib.metadata.version(p) for p in packages}}


def write(name: str, model_dir: pathlib.Path, packages: tuple[str, ...], **content) -> pathlib.Path:
    """Write ``tests/reference/NAME.json`` with the versions, command and model fingerprint."""
    out = HERE / f"{name}.json"
    command = " ".join(shlex.quote(a) for a in [pathlib.Path(sys.executable).name, *sys.argv])
    doc = {"versions": versions(*packages), "command": command, "model": model_fingerprint(model_dir), **content}
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out

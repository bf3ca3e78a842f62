"""Prompt templates: TOML files that say what to ask the model and how to read its answer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import string
import sys
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import GenrankError

DEFAULT_TEMPLATE = "lb-reranker-v1"
SCORE_METHODS = ("expected",)
_FIELDS = {"query", "document", "instruction"}


class TemplateError(GenrankError):
    """A template file is missing, malformed, or does not fit the tokenizer."""


@dataclass(frozen=True)
class Template:
    """A reranking prompt: chat strings, the label strings and the value of each label."""

    name: str
    system: str | None
    user: str
    labels: tuple[str, ...]
    values: tuple[float, ...]
    normalize: bool = True
    assistant_prefix: str = ""
    default_instruction: str | None = None
    description: str = ""
    default_model: str | None = None

    @cached_property
    def takes_instruction(self) -> bool:
        """Whether ``user`` has an ``{instruction}`` field."""
        return "instruction" in _fields(self.user)

    def instruction(self, instruction: str | None = None) -> str:
        """``instruction``, or the default one when it is None ("" if the template has none)."""
        return instruction if instruction is not None else (self.default_instruction or "")

    def user_message(self, query: str, document: str, instruction: str | None = None) -> str:
        fields = {"query": query, "document": document}
        if self.takes_instruction:
            fields["instruction"] = self.instruction(instruction)
        return self.user.format_map(fields)

    def messages(self, query: str, document: str, instruction: str | None = None) -> list[dict[str, str]]:
        """The system+user chat for one pair."""
        chat = [{"role": "system", "content": self.system}] if self.system is not None else []
        chat.append({"role": "user", "content": self.user_message(query, document, instruction)})
        return chat


def _fields(pattern: str) -> set[str]:
    """The field names in a ``str.format`` pattern."""
    return {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}


def _template_dir() -> Path:
    packaged = resources.files("genrank") / "prompts"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "prompts"  # source checkout


def list_templates() -> list[dict[str, str | None]]:
    """The templates shipped with genrank: name, description, labels and default model."""
    out = []
    for path in sorted(_template_dir().glob("*.toml")):
        t = load_template(path)
        out.append({"name": t.name, "description": t.description, "labels": " ".join(t.labels),
                    "default_model": t.default_model, "path": str(path)})
    return out


def load_template(name_or_path: str | Path | Template = DEFAULT_TEMPLATE) -> Template:
    """Load a shipped template by name, or a user's TOML file by path."""
    if isinstance(name_or_path, Template):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = _template_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            names = ", ".join(p.stem for p in sorted(_template_dir().glob("*.toml")))
            raise TemplateError(f"unknown template {str(name_or_path)!r}; shipped templates: {names} "
                                "(or pass the path of a .toml file)")
    if not path.is_file():
        raise TemplateError(f"template file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise TemplateError(f"template file {str(path)!r} is not valid TOML: {e}") from None
    return _from_dict(data, source=str(path))


def _from_dict(data: dict, source: str) -> Template:
    def need(key: str, kind: type) -> object:
        if key not in data:
            raise TemplateError(f"template {source!r}: missing field {key!r}")
        if not isinstance(data[key], kind):
            raise TemplateError(f"template {source!r}: field {key!r} must be a {kind.__name__}, got {data[key]!r}")
        return data[key]

    user = need("user", str)
    try:
        used = _fields(user)
    except ValueError as e:  # unbalanced braces
        raise TemplateError(f"template {source!r}: field 'user' is not a valid format string: {e}") from None
    if not {"query", "document"} <= used or used - _FIELDS:
        raise TemplateError(f"template {source!r}: field 'user' must use {{query}} and {{document}} "
                            f"(and optionally {{instruction}}), found {sorted(used)}")
    labels = need("labels", dict)
    if len(labels) < 2:
        raise TemplateError(f"template {source!r}: [labels] needs at least two labels, got {labels!r}")
    for label, value in labels.items():
        if not label or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TemplateError(f"template {source!r}: label {label!r} must map to a number, got {value!r}")
    score = data.get("score", {})
    if not isinstance(score, dict):
        raise TemplateError(f"template {source!r}: field 'score' must be a table, got {score!r}")
    method = score.get("method", "expected")
    if method not in SCORE_METHODS:
        raise TemplateError(f"template {source!r}: [score] method {method!r} is not one of {SCORE_METHODS}")
    normalize = score.get("normalize", True)
    if not isinstance(normalize, bool):
        raise TemplateError(f"template {source!r}: [score] normalize must be true or false, got {normalize!r}")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise TemplateError(f"template {source!r}: field 'system' must be a string, got {system!r}")
    return Template(
        name=str(data.get("name", Path(source).stem)),
        system=system,
        user=user,
        labels=tuple(labels),
        values=tuple(float(v) for v in labels.values()),
        normalize=normalize,
        assistant_prefix=str(data.get("assistant_prefix", "")),
        default_instruction=data.get("default_instruction"),
        description=str(data.get("description", "")),
        default_model=data.get("default_model"),
    )


def template_sha256(template: Template) -> str:
    """SHA-256 of a template's content: tells an edited template from the one a file was made with."""
    content = json.dumps(dataclasses.asdict(template), sort_keys=True).encode()
    return hashlib.sha256(content).hexdigest()

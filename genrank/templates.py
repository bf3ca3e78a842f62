"""Recipes (prompt templates): TOML files that say what to ask the model and how to read its answer.

A recipe is either a chat (``system``/``user`` messages rendered with the model's chat template) or
a list of ``[[pieces]]``, texts tokenized separately and joined without a chat template, as a
model's authors' code builds its prompt; a recipe with pieces may also give its chat form for
servers that apply the chat template themselves. ``[score]`` names the score kind and its [0, 1]
relevance rule (genrank.scorer.ScoreRule), ``models`` the models it is the recipe of.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import string
import sys
from dataclasses import dataclass, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import GenrankError
from .scorer import RELEVANCE_RULES, SCORE_KINDS, ScoreRule

DEFAULT_TEMPLATE = "lb-reranker-v1"
SCORE_METHODS = SCORE_KINDS  # the old name of the score kinds
_FIELDS = {"query", "document", "instruction"}
_PIECE_TOKENS = ("bos",)


class TemplateError(GenrankError):
    """A template file is missing, malformed, or does not fit the tokenizer."""


@dataclass(frozen=True)
class Piece:
    """One separately tokenized part of a prompt without a chat template.

    ``text`` is a str.format pattern (fields: query, document, instruction), or None for a
    ``token`` ("bos": the tokenizer's BOS id when it has one distinct from its pad id, as
    FlagEmbedding adds it). ``text_with_instruction`` replaces ``text`` when the instruction is
    not empty (mxbai-rerank's query part). ``max_share`` cuts the piece to
    ``floor(max_length * max_share)`` tokens (from its end) before the prompt-wide rule.
    """

    name: str
    text: str | None = None
    text_with_instruction: str | None = None
    token: str | None = None
    max_share: float | None = None

    @cached_property
    def fields(self) -> set[str]:
        return set().union(*(_fields(t) for t in (self.text, self.text_with_instruction) if t is not None))


@dataclass(frozen=True)
class Truncation:
    """The prompt-wide length rule of a recipe with pieces.

    The pieces named in ``count`` may hold ``max_length`` tokens plus the lengths of the pieces
    named in ``plus``; the excess is cut from the end of the pieces named in ``cut`` (taken as
    one sequence), and nothing is cut when they are not longer than the excess (as transformers'
    ``truncation="only_second"`` does). ``within_model``: ``max_length`` is first lowered so that
    the whole prompt fits the model's ``max_position_embeddings`` (mxbai-rerank's rule).
    """

    count: tuple[str, ...]
    cut: tuple[str, ...]
    plus: tuple[str, ...] = ()
    within_model: bool = False


@dataclass(frozen=True)
class Template:
    """A reranking recipe: the prompt (chat strings or pieces), the labels and the score rule."""

    name: str
    system: str | None
    user: str | None
    labels: tuple[str, ...]
    score: ScoreRule
    assistant_prefix: str = ""
    default_instruction: str | None = None
    description: str = ""
    default_model: str | None = None
    models: tuple[str, ...] = ()
    pieces: tuple[Piece, ...] = ()
    truncation: Truncation | None = None
    max_length: int | None = None  # the authors' default max_length
    sigmoid_shift_by_model: tuple[tuple[str, float], ...] = ()

    @property
    def values(self) -> tuple[float, ...]:
        """The value of each label."""
        return self.score.values

    @property
    def normalize(self) -> bool:
        return self.score.normalize

    @property
    def has_chat(self) -> bool:
        """Whether the recipe has a chat form (system/user messages)."""
        return self.user is not None

    @cached_property
    def takes_instruction(self) -> bool:
        """Whether the prompt has an ``{instruction}`` field."""
        if self.pieces:
            return any("instruction" in p.fields for p in self.pieces)
        return "instruction" in _fields(self.user)

    def instruction(self, instruction: str | None = None) -> str:
        """``instruction``, or the default one when it is None ("" if the template has none)."""
        return instruction if instruction is not None else (self.default_instruction or "")

    def user_message(self, query: str, document: str, instruction: str | None = None) -> str:
        if self.user is None:
            raise TemplateError(f"recipe {self.name!r} has no chat form (it is built from pieces without a chat "
                                "template); use an engine that takes token ids")
        fields = {"query": query, "document": document}
        if "instruction" in _fields(self.user):
            fields["instruction"] = self.instruction(instruction)
        return self.user.format_map(fields)

    def messages(self, query: str, document: str, instruction: str | None = None) -> list[dict[str, str]]:
        """The system+user chat for one pair."""
        user = self.user_message(query, document, instruction)
        chat = [{"role": "system", "content": self.system}] if self.system is not None else []
        chat.append({"role": "user", "content": user})
        return chat

    def score_rule(self, model: str | None = None, normalize: bool | None = None) -> ScoreRule:
        """The score rule for ``model`` (its sigmoid shift, where the recipe has one per model)."""
        rule = self.score
        shift = dict(self.sigmoid_shift_by_model).get(model_key(model)) if model else None
        if shift is not None:
            rule = replace(rule, shift=shift)
        if normalize is not None:
            rule = replace(rule, normalize=normalize)
        return rule

    def is_for(self, model: str) -> bool:
        """Whether ``model`` (a name or a path) is one of the recipe's models."""
        return model_key(model) in {model_key(m) for m in self.models}


def model_key(model: str) -> str:
    """What model names are matched on: the last part of a name or path, lower case."""
    return str(model).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()


def _fields(pattern: str) -> set[str]:
    """The field names in a ``str.format`` pattern."""
    return {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}


def _template_dir() -> Path:
    packaged = resources.files("genrank") / "prompts"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "prompts"  # source checkout


def list_templates() -> list[dict[str, Any]]:
    """The recipes shipped with genrank: name, description, labels, models, score kind and scale."""
    out = []
    for path in sorted(_template_dir().glob("*.toml")):
        t = load_template(path)
        out.append({"name": t.name, "description": t.description, "labels": " ".join(t.labels),
                    "default_model": t.default_model, "models": list(t.models), "score": t.score.kind,
                    "scale": t.score.scale, "relevance": t.score.relevance_text, "chat": t.has_chat,
                    "path": str(path)})
    return out


def shipped_templates() -> list[Template]:
    """Every shipped recipe."""
    return [load_template(path) for path in sorted(_template_dir().glob("*.toml"))]


def template_for_model(model: str | None) -> Template | None:
    """The shipped recipe whose ``models`` name ``model`` (by its last name part), or None."""
    if model is None:
        return None
    for t in shipped_templates():
        if t.is_for(model):
            return t
    return None


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
    def fail(message: str) -> TemplateError:
        return TemplateError(f"template {source!r}: {message}")

    def get(table: dict, key: str, kind: type | tuple[type, ...], default: Any = None, where: str = "field") -> Any:
        value = table.get(key, default)
        if value is not default and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
            words = {"dict": "table", "str": "string", "int": "integer", "float": "number", "bool": "boolean"}
            names = " or ".join(words.get(k.__name__, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise fail(f"{where} {key!r} must be a {names}, got {value!r}")
        return value

    pieces = _pieces(data.get("pieces"), fail)
    user = get(data, "user", str)
    if user is None and not pieces:
        raise fail("missing field 'user' (or [[pieces]])")
    if user is not None:
        try:
            used = _fields(user)
        except ValueError as e:  # unbalanced braces
            raise fail(f"field 'user' is not a valid format string: {e}") from None
        if not {"query", "document"} <= used or used - _FIELDS:
            raise fail(f"field 'user' must use {{query}} and {{document}} (and optionally {{instruction}}), "
                       f"found {sorted(used)}")
    score = get(data, "score", dict, {})
    kind = score.get("kind", score.get("method", "expected"))
    if kind not in SCORE_KINDS:
        raise fail(f"[score] kind {kind!r} is not one of {SCORE_KINDS}" if "kind" in score else
                   f"[score] method {kind!r} is not one of {SCORE_KINDS}")
    labels = get(data, "labels", dict)
    if labels is None:
        raise fail("missing field 'labels'")
    wanted = {"expected": "at least two labels", "log_odds": "exactly two labels", "logit": "exactly one label"}[kind]
    if (kind == "expected" and len(labels) < 2) or (kind == "log_odds" and len(labels) != 2) or \
            (kind == "logit" and len(labels) != 1):
        raise fail(f"[labels] needs {wanted} for score kind {kind!r}, got {labels!r}")
    for label, value in labels.items():
        if not label or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"label {label!r} must map to a number, got {value!r}")
    values = tuple(float(v) for v in labels.values())
    if len(set(values)) != len(values) and kind == "log_odds":
        raise fail(f"the two labels of a log_odds score need different values, got {labels!r}")
    normalize = get(score, "normalize", bool, True, where="[score]")
    relevance = get(score, "relevance", str, "linear" if kind == "expected" else "sigmoid", where="[score]")
    if relevance not in RELEVANCE_RULES:
        raise fail(f"[score] relevance {relevance!r} is not one of {RELEVANCE_RULES}")
    if relevance == "linear" and kind != "expected":
        raise fail(f"[score] relevance 'linear' needs bounded scores (kind 'expected'), not {kind!r}")
    shift = float(get(score, "sigmoid_shift", (int, float), 0.0, where="[score]"))
    by_model = get(score, "sigmoid_shift_by_model", dict, {}, where="[score]")
    for model, value in by_model.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"[score.sigmoid_shift_by_model] {model!r} must be a number, got {value!r}")
    system = get(data, "system", str)
    models = get(data, "models", list, [])
    if not all(isinstance(m, str) and m for m in models):
        raise fail(f"field 'models' must be a list of model names, got {models!r}")
    default_model = get(data, "default_model", str) or (models[0] if models else None)
    max_length = get(data, "max_length", int)
    if max_length is not None and max_length < 1:
        raise fail(f"field 'max_length' must be a positive integer, got {max_length!r}")
    truncation = _truncation(data.get("truncate"), pieces, fail) if pieces else None
    return Template(
        name=str(data.get("name", Path(source).stem)),
        system=system,
        user=user,
        labels=tuple(labels),
        score=ScoreRule(kind, values, normalize=normalize, relevance=relevance, shift=shift),
        assistant_prefix=str(data.get("assistant_prefix", "")),
        default_instruction=get(data, "default_instruction", str),
        description=str(data.get("description", "")),
        default_model=default_model,
        models=tuple(models),
        pieces=pieces,
        truncation=truncation,
        max_length=max_length,
        sigmoid_shift_by_model=tuple((model_key(m), float(v)) for m, v in by_model.items()),
    )


def template_sha256(template: Template) -> str:
    """SHA-256 of a template's content: tells an edited template from the one a file was made with."""
    content = json.dumps(dataclasses.asdict(template), sort_keys=True).encode()
    return hashlib.sha256(content).hexdigest()


def _pieces(raw: Any, fail: Callable[[str], TemplateError]) -> tuple[Piece, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw or not all(isinstance(p, dict) for p in raw):
        raise fail(f"[[pieces]] must be a list of tables, got {raw!r}")
    pieces = []
    for n, p in enumerate(raw):
        unknown = set(p) - {"name", "text", "text_with_instruction", "token", "max_share"}
        if unknown:
            raise fail(f"pieces[{n}] has unknown keys {sorted(unknown)}")
        name = p.get("name", f"piece{n}")
        text, token = p.get("text"), p.get("token")
        if (text is None) == (token is None):
            raise fail(f"piece {name!r} needs exactly one of 'text' or 'token'")
        if token is not None and token not in _PIECE_TOKENS:
            raise fail(f"piece {name!r}: token {token!r} is not one of {_PIECE_TOKENS}")
        share = p.get("max_share")
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1):
            raise fail(f"piece {name!r}: max_share must be a number in (0, 1], got {share!r}")
        piece = Piece(str(name), text, p.get("text_with_instruction"), token, None if share is None else float(share))
        for t in (piece.text, piece.text_with_instruction):
            if t is None:
                continue
            if not isinstance(t, str):
                raise fail(f"piece {name!r}: text must be a string, got {t!r}")
            try:
                extra = _fields(t) - _FIELDS
            except ValueError as e:
                raise fail(f"piece {name!r}: text is not a valid format string: {e}") from None
            if extra:
                raise fail(f"piece {name!r}: unknown fields {sorted(extra)} (fields: {sorted(_FIELDS)})")
        pieces.append(piece)
    names = [p.name for p in pieces]
    if len(set(names)) != len(names):
        raise fail(f"piece names must be unique, got {names}")
    used = set().union(*(p.fields for p in pieces))
    if not {"query", "document"} <= used:
        raise fail(f"the pieces must use {{query}} and {{document}}, found {sorted(used)}")
    return tuple(pieces)


def _truncation(raw: Any, pieces: tuple[Piece, ...], fail: Callable[[str], TemplateError]) -> Truncation:
    names = [p.name for p in pieces]
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise fail(f"[truncate] must be a table, got {raw!r}")
    document = next(p.name for p in pieces if "document" in p.fields)
    unknown = set(raw) - {"count", "cut", "plus", "within_model"}
    if unknown:
        raise fail(f"[truncate] has unknown keys {sorted(unknown)}")
    within = raw.get("within_model", False)
    if not isinstance(within, bool):
        raise fail(f"[truncate] within_model must be true or false, got {within!r}")
    rule = Truncation(tuple(raw.get("count", names)), tuple(raw.get("cut", [document])), tuple(raw.get("plus", [])),
                      within)
    for key in ("count", "cut", "plus"):
        bad = [n for n in getattr(rule, key) if n not in names]
        if bad:
            raise fail(f"[truncate] {key} names unknown pieces {bad}; pieces: {names}")
    cut = [names.index(n) for n in rule.cut]
    if not cut or cut != list(range(cut[0], cut[0] + len(cut))):
        raise fail(f"[truncate] cut must name adjacent pieces in order, got {list(rule.cut)}")
    return rule

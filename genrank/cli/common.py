"""What the subcommands share: the user-error type, help formatting, model and engine options."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections.abc import Callable
from typing import Any

from ..engines.loading import ModelNotFetchable
from ..errors import GenrankError, MissingExtra
from ..prompts import LONG_DOCUMENTS
from ..reranker import Reranker
from ..templates import DEFAULT_TEMPLATE


class CliError(GenrankError):
    """A user error on the command line: printed as one line, exit status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: appended, unless the help text already says it; required options say so."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        return text if "(default:" in text else super()._get_help_string(action)


def _number(kind: type, holds: Callable[[float], bool], wanted: str) -> Callable[[str], Any]:
    """An argparse ``type`` that parses ``kind`` and refuses a value for which ``holds`` is false."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not holds(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_number = _number(float, lambda v: v > 0, "a positive number")
non_negative_number = _number(float, lambda v: v >= 0, "a non-negative number")
fraction = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1")


def is_refusal(e: BaseException) -> bool:
    """Whether ``e`` is a refusal with a message for the user (one line), not an unexpected failure.

    genrank's own (``GenrankError``, ``MissingExtra``), and a remote server's refusal the OpenAI
    driver raises as the ``openai`` package's exception (401, 403, 404, a rejected setup).
    """
    if isinstance(e, (GenrankError, MissingExtra)):
        return True
    openai = sys.modules.get("openai")
    return openai is not None and isinstance(e, openai.OpenAIError)


def require(extra: str, *modules: str) -> None:
    """A CliError naming ``pip install 'genrank[extra]'`` if any of ``modules`` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f"this command needs {', '.join(missing)}, which is not installed; "
                       f"install it with: pip install 'genrank[{extra}]'")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options every scoring command shares: model, engine, template and engine settings."""
    g = p.add_argument_group("model and engine")
    g.add_argument("--model", "-m", default=None,
                   help="model id or path (default: the recipe's default model)")
    g.add_argument("--engine", "-e", default="auto",
                   help="auto (vLLM when it is installed and a CUDA GPU is present, else hf), hf, vllm, lmdeploy or openai")
    g.add_argument("--template", "-t", default=None,
                   help="recipe name or path of a .toml file (default: the shipped recipe whose models name --model, "
                        f"else {DEFAULT_TEMPLATE}; see genrank templates)")
    g.add_argument("--max-length", type=positive_int, default=None,
                   help="max prompt tokens, or the recipe authors' max_length for recipes built from pieces; "
                        "documents are cut to fit (default: the recipe's, else 1024)")
    g.add_argument("--long-documents", choices=LONG_DOCUMENTS, default="truncate",
                   help="a document too long for --max-length: truncate it, or score each window of it "
                        "(chunks) and keep the best window's score")
    g.add_argument("--instruction", default=None,
                   help="task instruction, for instruction-aware templates (default: the template's own)")
    g.add_argument("--card-formula", action="store_true",
                   help="do not renormalise label probabilities (the lb-reranker card's formula)")
    g.add_argument("--base-url", default=None,
                   help="server URL for --engine openai (default: OPENAI_BASE_URL, else the OpenAI API)")
    g.add_argument("--engine-arg", "-E", action="append", default=None, metavar="KEY=VALUE",
                   help="extra engine option, VALUE parsed as JSON when it can be (repeatable), e.g. -E dtype=float32 "
                        "(default: none)")


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    """--calibration and --allow-other-model, for the commands that report scores."""
    g = p.add_argument_group("calibration")
    g.add_argument("--calibration", default=None, metavar="CALIB.json",
                   help="a calibration from genrank calibrate: adds the probability that each pair is relevant "
                        "(default: none)")
    g.add_argument("--allow-other-model", action="store_true",
                   help="use a calibration fitted for another model name (the recipe and score settings must "
                        "still match)")


# Reranker arguments that have their own flag (or none): --engine-arg must not set them.
_NOT_ENGINE_OPTIONS = {"model": "--model", "engine": "--engine", "template": "--template",
                       "max_length": "--max-length", "long_documents": "--long-documents",
                       "instruction": "--instruction", "normalize": "--card-formula",
                       "base_url": "--base-url", "chunk_size": None, "show_progress": None,
                       "calibration": "--calibration", "allow_other_model": "--allow-other-model"}


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in args.engine_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--engine-arg must be KEY=VALUE, got {item!r}")
        if key in _NOT_ENGINE_OPTIONS:
            flag = _NOT_ENGINE_OPTIONS[key]
            raise CliError(f"--engine-arg {item!r}: use {flag} instead" if flag
                           else f"--engine-arg {item!r}: {key} is not an engine option")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    if args.base_url is not None:
        opts["base_url"] = args.base_url
    return opts


def reranker_from_args(args: argparse.Namespace, **overrides: Any) -> Reranker:
    """The Reranker the options describe; a model that cannot be read (OSError: not found, no access) is a CliError."""
    calibration = {"calibration": args.calibration, "allow_other_model": args.allow_other_model} \
        if getattr(args, "calibration", None) else {}  # only commands with add_calibration_options have them
    try:
        return Reranker(args.model, engine=args.engine, template=args.template, max_length=args.max_length,
                        long_documents=args.long_documents, instruction=args.instruction,
                        normalize=False if args.card_formula else None, **engine_options(args), **calibration,
                        **overrides)
    except ModelNotFetchable as e:  # its message says what happened and what to do
        raise CliError(str(e)) from e
    except OSError as e:
        raise CliError(f"cannot load the model: {e}") from e



"""The ``genrank`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .templates import DEFAULT_TEMPLATE, list_templates


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options every scoring command shares: model, engine, template and engine settings."""
    g = p.add_argument_group("model and engine")
    g.add_argument("--model", "-m", default=None, help="model id or path (default: the template's default model)")
    g.add_argument("--engine", "-e", default="auto", help="auto, hf, vllm, lmdeploy or openai")
    g.add_argument("--template", "-t", default=DEFAULT_TEMPLATE, help="template name or path of a .toml file")
    g.add_argument("--max-length", type=int, default=1024, help="max prompt tokens; documents are cut to fit")
    g.add_argument("--instruction", default=None, help="task instruction, for instruction-aware templates")
    g.add_argument("--card-formula", action="store_true",
                   help="do not renormalise label probabilities (the lb-reranker card's formula)")
    g.add_argument("--base-url", default=None, help="server URL for --engine openai")
    g.add_argument("--engine-arg", "-E", action="append", default=None, metavar="KEY=VALUE",
                   help="extra engine option, VALUE parsed as JSON when it can be (repeatable), e.g. -E dtype=float32")


# Reranker arguments that have their own flag (or none): --engine-arg must not set them.
_NOT_ENGINE_OPTIONS = {"model": "--model", "engine": "--engine", "template": "--template",
                       "max_length": "--max-length", "instruction": "--instruction", "normalize": "--card-formula",
                       "base_url": "--base-url", "chunk_size": None, "show_progress": None}


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


def reranker_from_args(args: argparse.Namespace, **overrides: Any):
    from .reranker import Reranker

    return Reranker(args.model, engine=args.engine, template=args.template, max_length=args.max_length,
                    instruction=args.instruction, normalize=False if args.card_formula else None,
                    **engine_options(args), **overrides)


def read_documents(path: str) -> list[str]:
    """Documents from a file: JSON list, JSONL (strings or objects with "text"), else one per line."""
    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"--docs: cannot read {path!r}: {e.strerror}") from None
    suffix = Path(path).suffix.lower()
    lines = [line.removesuffix("\r") for line in raw.split("\n")]  # not splitlines: form feeds are text
    if suffix == ".json":
        try:
            docs = json.loads(raw)
        except json.JSONDecodeError as e:
            raise CliError(f"--docs: {path!r} is not JSON: {e}") from None
        if not isinstance(docs, list):
            raise CliError(f"--docs: {path!r} must hold a JSON list of strings")
    elif suffix == ".jsonl":
        docs = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise CliError(f"--docs: {path!r} line {n} is not JSON: {e.msg}") from None
            docs.append(item.get("text", item.get("document")) if isinstance(item, dict) else item)
    else:
        docs = [line for line in lines if line.strip()]
    for n, d in enumerate(docs, 1):
        if not isinstance(d, str):
            raise CliError(f"--docs: document {n} in {path!r} is not a string: {d!r:.80}")
    if not docs:
        raise CliError(f"--docs: no documents in {path!r}")
    return docs


def cmd_rank(args: argparse.Namespace) -> int:
    docs = read_documents(args.docs)
    ranking = reranker_from_args(args).rank(args.query, docs, top_k=args.top_k, return_documents=True)
    if args.json:
        for row in ranking:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'score':>7}  {'id':>4}  document")
    for n, row in enumerate(ranking, 1):
        text = " ".join(row["text"].split())
        print(f"{n:>4}  {row['score']:>7.4f}  {row['corpus_id']:>4}  {text[:100] + ('…' if len(text) > 100 else '')}")
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    rows = list_templates()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    for row in rows:
        print(f"{row['name']:<26} labels: {row['labels']:<14} {row['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="genrank", description="Rerank documents with a causal LLM.",
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("rank", help="rank documents for one query", formatter_class=fmt)
    p.add_argument("query", help="the query")
    p.add_argument("--docs", "-d", required=True,
                   help="documents: .txt (one per line), .jsonl or .json; - for standard input")
    p.add_argument("--top-k", "-k", type=int, default=None, help="show only the best K (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    add_model_options(p)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("templates", help="list the shipped prompt templates", formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=cmd_templates)

    from . import batch, evaluate  # here, not at the top: they import this module

    batch.add_command(sub, fmt)
    evaluate.add_command(sub, fmt)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ValueError, ImportError, OSError) as e:  # OSError: model files not found
        print(f"genrank: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        openai = sys.modules.get("openai")  # a server's 401/403/404 from the remote engine
        if openai is None or not isinstance(e, openai.OpenAIError):
            raise
        print(f"genrank: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

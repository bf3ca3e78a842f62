"""``genrank rank``: rank a file of documents for one query."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import (CliError, HelpFormatter, add_calibration_options, add_model_options, positive_int,
                     reranker_from_args)


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
    if args.min_probability is not None and args.calibration is None:
        raise CliError("--min-probability needs --calibration (a CALIB.json from genrank calibrate)")
    docs = read_documents(args.docs)
    with reranker_from_args(args) as reranker:
        ranking = reranker.rank(args.query, docs, top_k=args.top_k, return_documents=True,
                                min_relevance=args.min_relevance, min_probability=args.min_probability)
    if args.json:
        for row in ranking:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    calibrated = args.calibration is not None
    print(f"{'rank':>4}  {'score':>7}  " + (f"{'P(rel)':>7}  " if calibrated else "") + f"{'id':>4}  document")
    for n, row in enumerate(ranking, 1):
        text = " ".join(row["text"].split())
        probability = f"{row['probability']:>7.4f}  " if calibrated else ""
        print(f"{n:>4}  {row['score']:>7.4f}  {probability}{row['corpus_id']:>4}  "
              f"{text[:100] + ('…' if len(text) > 100 else '')}")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("rank", help="rank documents for one query", formatter_class=HelpFormatter)
    p.add_argument("query", help="the query")
    p.add_argument("--docs", "-d", required=True,
                   help="documents: .txt (one per line), .jsonl or .json; - for standard input")
    p.add_argument("--top-k", "-k", type=positive_int, default=None, help="show only the best K (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--min-relevance", type=float, default=None,
                   help="show only documents with at least this relevance on [0, 1] (default: all)")
    p.add_argument("--min-probability", type=float, default=None,
                   help="with --calibration: show only documents at least this likely to be relevant (default: all)")
    add_model_options(p)
    add_calibration_options(p)
    p.set_defaults(func=cmd_rank)

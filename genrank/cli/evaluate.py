"""``genrank eval``: rerank a BEIR-format dataset and report trec_eval metrics."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..evaluate import evaluate_run, format_table, load_first_stage, write_trec_run
from .common import HelpFormatter, add_model_options, positive_int, reranker_from_args, require


def cmd_eval(args: argparse.Namespace) -> int:
    require("eval", "pytrec_eval", *(() if args.run else ("bm25s",)))
    data, first = load_first_stage(args.data, run_file=args.run, split=args.split, top_k=args.top_k,
                                   max_queries=args.max_queries)  # before the model loads: data errors come fast
    with reranker_from_args(args, show_progress=sys.stderr.isatty()) as reranker:
        result = evaluate_run(reranker, data, first, top_k=args.top_k, source=args.run or "bm25")
    if args.output:
        write_trec_run(result.run, args.output)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_table(result))
    for f in result.failures[:5]:
        print(f"genrank: warning: query {f.query_id!r} document {f.doc_id!r} not scored: {f.error}", file=sys.stderr)
    if len(result.failures) > 5:
        print(f"genrank: warning: {len(result.failures) - 5} more pairs not scored", file=sys.stderr)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("eval", formatter_class=HelpFormatter,
                       help="rerank a BEIR-format dataset and report NDCG, MRR, recall and accuracy",
                       description="Rerank the first stage of a BEIR-format folder (corpus.jsonl, queries.jsonl, "
                                   "qrels/SPLIT.tsv) and compare metrics before and after. Both rows use the same "
                                   "top-k candidates; failed pairs are kept last and reported.")
    p.add_argument("data", help="BEIR-format folder")
    p.add_argument("--run", "-r", default=None,
                   help="first-stage TREC run file (default: BM25 over corpus.jsonl, with bm25s)")
    p.add_argument("--split", default="test", help="qrels file: qrels/SPLIT.tsv")
    p.add_argument("--top-k", "-k", type=positive_int, default=100, help="candidates per query to rerank")
    p.add_argument("--max-queries", "-n", type=positive_int, default=None,
                   help="evaluate only the first N judged queries of queries.jsonl (default: all)")
    p.add_argument("--output", "-o", default=None, help="write the reranked run here as a TREC run file (default: not written)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_model_options(p)
    p.set_defaults(func=cmd_eval)

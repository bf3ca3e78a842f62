"""``genrank score``: score a file of pairs into a file of scores."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any

from .. import io
from ..batch import score_file
from .common import (CliError, HelpFormatter, add_calibration_options, add_model_options, require,
                     reranker_from_args)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return shard


def cmd_score(args: argparse.Namespace) -> int:
    if not os.path.exists(args.input):
        raise CliError(f"input {args.input!r} does not exist")
    fields = {"query_field": args.query_field, "document_field": args.document_field, "id_field": args.id_field,
              "documents_field": args.documents_field}
    if args.ray:
        require("ray", "ray", "pyarrow")
        from .. import ray as genrank_ray

        if args.shard is not None:
            raise CliError("--shard splits work between machines by hand; --ray does that itself")
        make_reranker = functools.partial(reranker_from_args, args)
        summary = genrank_ray.score_files_ray(
            args.input, args.output, make_reranker, format=args.format, num_gpus=args.num_gpus,
            concurrency=args.concurrency, num_cpus=args.num_cpus, batch_size=args.chunk_size, **fields)
    else:
        fmt = io.detect_format(args.input, args.format)
        if io.FORMATS.get(os.path.splitext(args.output)[1].lower(), fmt) != fmt:
            raise CliError(f"the output is written in the input's format ({fmt}); give {args.output!r} a .{fmt} name")
        reranker = reranker_from_args(args)
        try:
            summary = score_file(args.input, args.output, reranker, format=fmt, chunk_size=args.chunk_size,
                                 shard=args.shard, overwrite=args.overwrite, show_progress=not args.quiet, **fields)
        except KeyboardInterrupt:
            print(f"genrank: interrupted; {_kept(args.output)}", file=sys.stderr)
            return 130
        except (ValueError, OSError, ImportError):  # a refusal, a bad input or file: printed by main()
            raise
        except Exception as e:  # the engine stopped the run (e.g. every request rejected the same way)
            raise CliError(f"{e} ({type(e).__name__}); {_kept(args.output)}") from e
    print(f"genrank score: {summary}", file=sys.stderr)
    return 1 if summary.failed else 0


def _kept(output: str) -> str:
    return f"the rows scored so far are kept in {output!r}: rerun the same command to resume"


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "score", formatter_class=HelpFormatter, help="score a JSONL, CSV or Parquet file of pairs (resumable, sharded)",
        description="Score every (query, document) pair of INPUT into OUTPUT (same format): the input's ids "
                    "plus score and label_mass (and probability with --calibration), and error for rows that "
                    "could not be scored. Rerun on the same OUTPUT with the same settings to resume after an "
                    "interruption. Exits 1 if any pair failed, 2 on an error (the rows done are kept).")
    p.add_argument("input", help="input file: .jsonl, .csv or .parquet")
    p.add_argument("--output", "-o", required=True,
                   help="output file, in the input's format (Parquet: built in OUTPUT.parts/, merged at the end), "
                        "with its manifest OUTPUT.genrank.json beside it")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: remove an earlier OUTPUT, its parts and its manifest (default: resume OUTPUT "
                        "if it was written with the same settings from the same input, else stop; --ray: OUTPUT must "
                        "not exist)")
    p.add_argument("--format", choices=sorted(set(io.FORMATS.values())), default=None,
                   help="file format (default: from the input's extension)")
    p.add_argument("--query-field", default="query", help="field holding the query")
    p.add_argument("--document-field", default="document", help="field holding the document")
    p.add_argument("--id-field", default="id", help="field holding the row id (rows without one get their row number)")
    p.add_argument("--documents-field", default=None,
                   help="field holding a list of documents, for one query per row (default: none, one pair per row)")
    p.add_argument("--chunk-size", type=int, default=1024, help="input rows read, scored and written at a time")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="score only chunks I, I+N, I+2N, ... (0 <= I < N), to split one input over N machines "
                        "(default: every chunk)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g = p.add_argument_group("Ray Data (pip install 'genrank[ray]')")
    g.add_argument("--ray", action="store_true",
                   help="run on Ray Data (the cluster at RAY_ADDRESS, else a local one): one engine per actor, "
                        "jsonl or parquet only, OUTPUT is a folder, rows not in input order")
    g.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per engine actor")
    g.add_argument("--concurrency", type=int, default=1, help="number of engine actors")
    g.add_argument("--num-cpus", type=float, default=None, help="CPUs per engine actor (default: Ray's, 1)")
    add_model_options(p)
    add_calibration_options(p)
    p.set_defaults(func=cmd_score)

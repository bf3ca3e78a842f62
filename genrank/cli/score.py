"""``genrank score``: score a file of pairs into a file of scores."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any

from .. import io
from ..batch import score_file
from ..errors import GenrankError
from .common import (CliError, HelpFormatter, add_calibration_options, add_model_options, is_refusal,
                     non_negative_number, positive_int, positive_number, require, reranker_from_args)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"must be I/N with 0 <= I < N, got {text!r}")
    return shard


def cmd_score(args: argparse.Namespace) -> int:
    if not args.ray and not os.path.exists(args.input):  # with --ray, Ray's filesystems look (URIs, the cluster's)
        raise CliError(f"input {args.input!r} does not exist")
    fields = {"query_field": args.query_field, "document_field": args.document_field, "id_field": args.id_field,
              "documents_field": args.documents_field}
    if args.ray:
        require("ray", "ray", "pyarrow")
        if args.shard is not None:
            raise CliError("--shard splits work between machines by hand; --ray does that itself")
        summary = _score_on_ray(args, fields)
    else:
        fmt = io.detect_format(args.input, args.format)
        if io.FORMATS.get(os.path.splitext(args.output)[1].lower(), fmt) != fmt:
            raise CliError(f"the output is written in the input's format ({fmt}); give {args.output!r} a .{fmt} name")
        with reranker_from_args(args) as reranker:
            try:
                summary = score_file(args.input, args.output, reranker, format=fmt, chunk_size=args.chunk_size,
                                     shard=args.shard, overwrite=args.overwrite, show_progress=not args.quiet,
                                     **fields)
            except KeyboardInterrupt:
                print(f"genrank: interrupted; {_kept(args.output)}", file=sys.stderr)
                return 130
            except GenrankError:  # a refusal before any row (bad input, another run's output): printed by main()
                raise
            except Exception as e:
                if is_refusal(e):  # the engine stopped the run (e.g. every request rejected the same way)
                    raise CliError(f"{e} ({type(e).__name__}); {_kept(args.output)}") from e
                print(f"genrank: the run stopped on an unexpected error (below); {_kept(args.output)}",
                      file=sys.stderr)
                raise
    print(f"genrank score: {summary}", file=sys.stderr)
    return 1 if summary.failed else 0


def _score_on_ray(args: argparse.Namespace, fields: dict[str, Any]) -> Any:
    import ray

    from .. import ray as genrank_ray

    started = not ray.is_initialized()  # a Ray this command starts, it also stops
    if started:
        # no --address and no RAY_ADDRESS: a new local Ray, never whatever cluster Ray last recorded
        # in /tmp/ray (a stale record of a dead one would hang the start)
        address = args.address or os.environ.get("RAY_ADDRESS") or "local"
        size = {"num_cpus": genrank_ray.local_cpus(args.concurrency, args.num_cpus)} if address == "local" else {}
        try:
            ray.init(address=address, log_to_driver=not args.quiet, **size)
        except ConnectionError as e:
            hint = ("; a cluster with token authentication also needs RAY_AUTH_MODE=token and its token here"
                    if address.startswith("ray://") and os.environ.get("RAY_AUTH_MODE") != "token" else "")
            raise CliError(f"cannot connect to the Ray cluster at {address!r}: {e}{hint}") from e
    make_reranker = functools.partial(reranker_from_args, args)
    try:
        return genrank_ray.score_files_ray(
            args.input, args.output, make_reranker, format=args.format, overwrite=args.overwrite,
            chunk_size=args.chunk_size, num_gpus=args.num_gpus, concurrency=args.concurrency,
            num_cpus=args.num_cpus, **fields)
    except genrank_ray.RayJobError as e:
        raise CliError(str(e)) from e
    except KeyboardInterrupt:
        print(f"genrank: interrupted; {_kept(args.output)}", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if started:
            ray.shutdown()


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
                        "if it was written with the same settings from the same input, else stop); with --ray, its "
                        "checkpoint OUTPUT.ckpt/ too")
    p.add_argument("--format", choices=sorted(set(io.FORMATS.values())), default=None,
                   help="file format (default: from the input's extension)")
    p.add_argument("--query-field", default="query", help="field holding the query")
    p.add_argument("--document-field", default="document", help="field holding the document")
    p.add_argument("--id-field", default="id", help="field holding the row id (rows without one get their row number)")
    p.add_argument("--documents-field", default=None,
                   help="field holding a list of documents, for one query per row (default: none, one pair per row)")
    p.add_argument("--chunk-size", type=positive_int, default=1024,
                   help="input rows read, scored and written at a time (--ray: rows per block, each write commits "
                        "about one block; a killed run redoes about one block per actor once the job's writes "
                        "have started)")
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="score only chunks I, I+N, I+2N, ... (0 <= I < N), to split one input over N machines "
                        "(default: every chunk)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g = p.add_argument_group("Ray Data (pip install 'genrank[ray]')")
    g.add_argument("--ray", action="store_true",
                   help="run on Ray Data: one engine per actor, jsonl or parquet only (a file or a folder), OUTPUT "
                        "is a folder (rows not in input order, ids required and unique), resumed through Ray Data's "
                        "checkpoint OUTPUT.ckpt/; on a cluster, paths on shared storage (s3://, NFS)")
    g.add_argument("--address", default=None,
                   help="Ray cluster to run on, e.g. ray://head:10001 or auto (default: RAY_ADDRESS, else a new "
                        "local Ray)")
    g.add_argument("--num-gpus", type=non_negative_number, default=0.0, help="GPUs per engine actor")
    g.add_argument("--concurrency", type=positive_int, default=1, help="number of engine actors")
    g.add_argument("--num-cpus", type=positive_number, default=None, help="CPUs per engine actor (default: Ray's, 1)")
    add_model_options(p)
    add_calibration_options(p)
    p.set_defaults(func=cmd_score)

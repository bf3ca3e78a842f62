"""``genrank calibrate``: fit a map from scores to P(relevant) on labelled pairs; write CALIB.json and its picture."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .. import io
from ..errors import GenrankError
from .common import CliError, HelpFormatter, add_model_options, fraction, positive_int, require, reranker_from_args


def cmd_calibrate(args: argparse.Namespace) -> int:
    require("calibrate", "sklearn", "matplotlib")
    from ..calibration.data import from_beir, from_file
    from ..calibration.fit import check_split
    from ..calibration.plot import reliability_diagram
    from ..calibration.run import calibrate, data_warnings, format_table, work_paths

    if Path(args.output).suffix != ".json":
        raise CliError(f"--output must be a .json file, got {args.output!r}")
    plot = args.plot or str(Path(args.output).with_suffix(".png"))
    for what, path in (("--output", args.output), ("--plot", plot)):
        if not Path(path).absolute().parent.is_dir():
            raise CliError(f"{what}: the folder of {path!r} does not exist")
    if os.path.isdir(args.data):
        if not args.run and not args.judged_only:
            require("eval", "bm25s")
        pairs = from_beir(args.data, run_file=args.run, split=args.split, top_k=args.top_k,
                          max_queries=args.max_queries, judged_only=args.judged_only,
                          relevant_grade=args.relevant_grade)
    elif os.path.exists(args.data):
        pairs = from_file(args.data, format=args.format, query_field=args.query_field,
                          document_field=args.document_field, label_field=args.label_field,
                          query_id_field=args.query_id_field, relevant_grade=args.relevant_grade)
    else:
        raise CliError(f"labelled data {args.data!r} does not exist (a BEIR folder, or a .jsonl, .csv or .parquet "
                       "file)")
    check_split(pairs.labels, pairs.query_ids, args.held_out, args.seed)  # data errors before the model loads
    reranker = reranker_from_args(args)
    try:
        run = calibrate(reranker, pairs, args.output, method=args.method, held_out=args.held_out, seed=args.seed,
                        overwrite=args.overwrite, chunk_size=args.chunk_size, show_progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"genrank: interrupted; {_kept(work_paths(args.output)[1])}", file=sys.stderr)
        return 130
    except (GenrankError, OSError, ImportError):  # a refusal or bad data: printed by main()
        raise
    except Exception as e:  # the engine stopped the run (e.g. every request rejected the same way)
        raise CliError(f"{e} ({type(e).__name__}); {_kept(work_paths(args.output)[1])}") from e
    calibration = run.result.calibration
    calibration.save(args.output)
    reliability_diagram(run.result, plot)
    print(format_table(calibration))
    if run.failed:
        first = min(run.failed)
        print(f"genrank: warning: {len(run.failed)} pairs could not be scored and were left out (pair {first}: "
              f"{run.failed[first]}); see {str(run.scores_path)!r}", file=sys.stderr)
    for warning in data_warnings(calibration):
        print(f"genrank: warning: {warning}", file=sys.stderr)
    print(f"genrank calibrate: wrote {args.output} and {plot}", file=sys.stderr)
    return 0


def _kept(scores: Path) -> str:
    return f"the pairs scored so far are kept in {str(scores)!r}: rerun the same command to resume"


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate", formatter_class=HelpFormatter,
        help="fit a map from scores to P(relevant) on labelled pairs (CALIB.json, CALIB.png)",
        description="Score labelled pairs (a BEIR folder, or a JSONL/CSV/Parquet file of query, document, label), "
                    "split them by query into a fit and a held-out part, fit Platt scaling and isotonic regression "
                    "on the fit part and keep the one with the lower held-out log-loss. Writes OUTPUT (the map, "
                    "the settings it is valid for, the data's fingerprint and the held-out metrics before and after), "
                    "a reliability diagram, and the pairs and their scores beside OUTPUT (OUTPUT.pairs.jsonl, "
                    "OUTPUT.scores.jsonl: rerun to resume an interrupted run). Use the file with --calibration. "
                    "Needs pip install 'genrank[calibrate]'.")
    p.add_argument("data", help="labelled data: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) or a "
                                ".jsonl, .csv or .parquet file with query, document and label")
    p.add_argument("--output", "-o", default="CALIB.json", help="the calibration file to write")
    p.add_argument("--plot", default=None, help="the reliability diagram to write (default: OUTPUT with .png)")
    p.add_argument("--method", choices=("platt", "isotonic"), default=None,
                   help="the map to keep (default: the one with the lower held-out log-loss)")
    p.add_argument("--held-out", type=fraction, default=0.3, help="share of the queries held out to measure the fit")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by query")
    p.add_argument("--relevant-grade", type=float, default=1,
                   help="a pair is relevant when its grade (qrels score, or the file's label) is at least this")
    p.add_argument("--overwrite", action="store_true",
                   help="score the pairs again (default: resume the scores beside OUTPUT if they were made with the "
                        "same settings from the same pairs, else stop)")
    p.add_argument("--chunk-size", type=positive_int, default=1024, help="pairs scored and written at a time")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    b = p.add_argument_group("BEIR folder (judged pairs take their grade; unjudged first-stage candidates are not "
                             "relevant)")
    b.add_argument("--run", "-r", default=None,
                   help="first-stage TREC run file (default: BM25 over corpus.jsonl, with bm25s)")
    b.add_argument("--split", default="test", help="qrels file: qrels/SPLIT.tsv")
    b.add_argument("--top-k", "-k", type=positive_int, default=100, help="first-stage candidates per query")
    b.add_argument("--max-queries", "-n", type=positive_int, default=None,
                   help="use only the first N judged queries of queries.jsonl (default: all)")
    b.add_argument("--judged-only", action="store_true", help="use the judged pairs alone (no first stage)")
    f = p.add_argument_group("labelled file")
    f.add_argument("--format", choices=sorted(set(io.FORMATS.values())), default=None,
                   help="file format (default: from the extension)")
    f.add_argument("--query-field", default="query", help="field holding the query")
    f.add_argument("--document-field", default="document", help="field holding the document")
    f.add_argument("--label-field", default="label", help="field holding the label: 0/1, or a grade")
    f.add_argument("--query-id-field", default=None,
                   help="field naming each row's query, for the split (default: the query text)")
    add_model_options(p)
    p.set_defaults(func=cmd_calibrate)

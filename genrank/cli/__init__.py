"""The ``genrank`` command line: one module per subcommand, all clients of the library."""

from __future__ import annotations

import argparse
import os
import sys

from . import calibrate, evaluate, rank, score, serve, templates
from .common import CliError, HelpFormatter, is_refusal

COMMANDS = (rank, score, evaluate, calibrate, serve, templates)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrank", description="Rerank documents with a causal LLM.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_command(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand: genrank's own refusals print one line and exit 2; anything else shows its traceback."""
    args = build_parser().parse_args(argv)
    # Library logs stay out of command output: vLLM logs to stdout unless told otherwise (read at its import).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        return args.func(args)
    except Exception as e:
        if not is_refusal(e):
            raise
        print(f"genrank: error: {e}", file=sys.stderr)
        return 2


__all__ = ["CliError", "build_parser", "main"]

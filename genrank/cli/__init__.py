"""The ``genrank`` command line: one module per subcommand, all clients of the library."""

from __future__ import annotations

import argparse
import os
import sys

from . import evaluate, rank, score, serve, templates
from .common import CliError, HelpFormatter

COMMANDS = (rank, score, evaluate, serve, templates)


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
    args = build_parser().parse_args(argv)
    # Library logs stay out of command output: vLLM logs to stdout unless told otherwise (read at its import).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
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


__all__ = ["CliError", "build_parser", "main"]

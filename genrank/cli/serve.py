"""``genrank serve``: a rerank HTTP service (Cohere, Jina, text-embeddings-inference) in front of any engine."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any

from ..calibration import load_calibration
from .common import (CliError, HelpFormatter, add_calibration_options, add_model_options, engine_options,
                     non_negative_int, non_negative_number, positive_int, positive_number, require, reranker_from_args)

KEYS_VARIABLE = "GENRANK_SERVE_API_KEY"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """The accepted keys: each --api-key, then the comma-separated ones of GENRANK_SERVE_API_KEY."""
    given = list(args.api_key or [])
    if any(not k.strip() for k in given):
        raise CliError("--api-key must not be blank")
    from_env = [k.strip() for k in os.environ.get(KEYS_VARIABLE, "").split(",") if k.strip()]
    return tuple(dict.fromkeys([k.strip() for k in given] + from_env))


def cmd_serve(args: argparse.Namespace) -> int:
    require("serve", "fastapi", "uvicorn", "prometheus_client")
    from ..serve import ServeSettings, serve

    engine_options(args)  # option errors now, not after the server has started
    if args.calibration is not None:
        load_calibration(args.calibration)  # a bad file too (whether it fits the model is checked when it loads)
    settings = ServeSettings(model_name=args.served_model_name, api_keys=api_keys(args),
                             max_batch_pairs=args.max_batch_pairs, batch_wait=args.batch_wait_ms / 1000,
                             max_documents=args.max_documents, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                             max_queue_pairs=args.max_queue_pairs, request_timeout=args.request_timeout,
                             body_timeout=args.body_timeout, shutdown_timeout=args.shutdown_timeout)
    if not settings.api_keys and args.host not in _LOOPBACK:
        print(f"genrank serve: warning: listening on {args.host} without API keys: anyone who reaches it can use it "
              f"(set --api-key or {KEYS_VARIABLE})", file=sys.stderr)
    serve(functools.partial(reranker_from_args, args), settings,
          host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "serve", formatter_class=HelpFormatter, help="serve a rerank HTTP API (Cohere, Jina, text-embeddings-inference)",
        description="Serve POST /v2/rerank (Cohere v2), /v1/rerank (Jina, Cohere v1) and /rerank "
                    "(text-embeddings-inference when the body has texts, else Jina), plus GET /health, /v1/models, "
                    "/metrics and the OpenAPI docs at /docs. relevance_score is on [0, 1]; with --calibration it "
                    "is the calibrated probability that the document is relevant (the genrank block keeps the "
                    "uncalibrated relevance), and requests may send min_relevance. Pairs of concurrent "
                    "requests are scored together. SIGTERM stops accepting, finishes the requests in flight "
                    "(within --shutdown-timeout) and exits 0. Needs pip install 'genrank[serve]'.")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--api-key", action="append", default=None, metavar="KEY",
                   help=f"accepted bearer key, required on every endpoint but /health (repeatable); more keys, "
                        f"comma-separated, in {KEYS_VARIABLE} (default: none, no auth)")
    g.add_argument("--served-model-name", default=None,
                   help="model name in responses and /v1/models (default: the engine's model)")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="log level; the access log (status, pairs, latency; never request text) is at info")
    b = p.add_argument_group("batching and limits")
    b.add_argument("--max-batch-pairs", type=non_negative_int, default=256,
                   help="most prompts in one engine call, gathered from concurrent requests "
                        "(0: one request per engine call)")
    b.add_argument("--batch-wait-ms", type=non_negative_number, default=5.0,
                   help="how long a request waits for others to join its engine call, in milliseconds")
    b.add_argument("--max-documents", type=positive_int, default=1000, help="most documents per request; more get 413")
    b.add_argument("--max-body-mb", type=positive_number, default=16.0, help="largest request body in MiB; larger get 413")
    b.add_argument("--max-queue-pairs", type=positive_int, default=10_000,
                   help="most pairs (windows, with --long-documents chunks) admitted and not yet answered; "
                        "a request beyond gets 429 with Retry-After")
    b.add_argument("--request-timeout", type=positive_number, default=60.0,
                   help="seconds a request may take before it is dropped with 504; its prompts not yet "
                        "scored are dropped too")
    b.add_argument("--body-timeout", type=positive_number, default=20.0,
                   help="seconds a client has to send its whole request body; a slower one gets 408 "
                        "(16 MiB at 10 Mbit/s takes 13.4 s)")
    b.add_argument("--shutdown-timeout", type=positive_number, default=25.0,
                   help="seconds SIGTERM waits for requests in flight; those still running are then answered "
                        "503 and the server exits (under Kubernetes' default grace period of 30 s)")
    add_model_options(p)
    add_calibration_options(p)
    p.set_defaults(func=cmd_serve)

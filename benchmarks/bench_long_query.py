"""A long query against many documents: time and memory of one request, through the Reranker and the service.

Workloads (issue 19): the query ``"the quick brown fox " * 50000`` (1,000,000 characters) with
``["short doc"] * 200``, and the same query with 1,000 documents. Each runs in a child process of
its own with the tiny Qwen2 model's tokenizer of tests/tiny_model.py (``max_length=1024``), either
through ``Reranker.score_details`` or as a ``POST /v2/rerank`` to the app in-process (httpx's
ASGI transport, the service's whole path but the socket). The engine is the transformers driver
on the tiny model (CPU, float32), or with ``--stand-in`` an engine that answers at once, which
leaves what genrank itself costs. Reports wall seconds of building the prompts alone
(``Reranker.prepare``) and of the whole request, the growth of the peak RSS over the RSS before
them (``ru_maxrss``), and the RSS after. A child still running after ``--timeout`` seconds is
stopped and reported as such.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_long_query.py [--stand-in] [--documents 200 1000] [--timeout 300]
      (``PYTHONPATH=<worktree of another commit>`` measures that commit)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

QUERY = "the quick brown fox " * 50000


class StandIn:
    """An engine that answers at once: the same log-probabilities for every prompt."""

    prompt_format = "tokens"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def label_logprobs(self, prompts, labels):
        import numpy as np

        from genrank.engines import LabelLogprobs

        return LabelLogprobs(np.full((len(prompts), len(labels.texts)), -np.log(len(labels.texts))))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(model: str, path: str, documents: int, stand_in: bool) -> dict:
    """One request in this process; the numbers as a dict."""
    import asyncio

    from genrank import Reranker

    if stand_in:
        from transformers import AutoTokenizer

        engine = StandIn(AutoTokenizer.from_pretrained(model))
    else:
        from genrank.engines.hf import TransformersEngine

        engine = TransformersEngine(model, device="cpu")
    reranker = Reranker(engine=engine, max_length=1024)
    docs = ["short doc"] * documents
    reranker.score_details([("warm up", "the engine")])
    before = rss_mb()
    start = time.perf_counter()
    reranker.prepare([(QUERY, d) for d in docs])
    build = time.perf_counter() - start
    start = time.perf_counter()
    if path == "reranker":
        scored = reranker.score_details([(QUERY, d) for d in docs])
        ok = len(scored.score) == documents
    else:
        import httpx

        from genrank.serve import ServeSettings, create_app

        app = create_app(reranker, ServeSettings(request_timeout=3600))

        async def post() -> httpx.Response:
            async with app.router.lifespan_context(app):
                while app.state.service.reranker is None:
                    await asyncio.sleep(0.01)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=3600) as client:
                    return await client.post("/v2/rerank", json={"query": QUERY, "documents": docs})

        response = asyncio.run(post())
        ok = response.status_code == 200 and len(response.json()["results"]) == documents
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "documents": documents, "ok": ok, "build_seconds": round(build, 2),
            "request_seconds": round(seconds, 2),
            "peak_rss_growth_mb": round(peak - before, 1), "rss_after_mb": round(rss_mb(), 1),
            "rss_before_mb": round(before, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=300, help="seconds a case may take before it is stopped")
    ap.add_argument("--documents", type=int, nargs="+", default=[200, 1000], help="documents per request")
    ap.add_argument("--stand-in", action="store_true", help="an engine that answers at once instead of the model")
    ap.add_argument("--case", nargs=3, metavar=("MODEL", "PATH", "DOCUMENTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        model, path, documents = args.case
        print(json.dumps(run_case(model, path, int(documents), args.stand_in)))
        return 0

    import genrank
    from tiny_model import build_tiny_model

    print(f"genrank from {Path(genrank.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "tiny-qwen2"))
        for path, documents in [(path, n) for n in args.documents for path in ("reranker", "service")]:
            try:
                out = subprocess.run([sys.executable, __file__, "--case", model, path, str(documents)]
                                     + ["--stand-in"] * args.stand_in,
                                     capture_output=True, text=True, timeout=args.timeout)
                row = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else \
                    {"path": path, "documents": documents, "error": out.stderr.strip().splitlines()[-1:]}
            except subprocess.TimeoutExpired:
                row = {"path": path, "documents": documents, "stopped_after_seconds": args.timeout}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

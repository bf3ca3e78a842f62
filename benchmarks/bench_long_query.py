"""A long query against many documents: time and memory of one request, through the Reranker and the service.

Workloads (issue 19): the query ``"the quick brown fox " * 50000`` (1,000,000 characters) with
``["short doc"] * 200``, and the same query with 1,000 documents. Each runs in a child process of
its own on the tiny Qwen2 model of tests/tiny_model.py (transformers engine, CPU, float32,
``max_length=1024``), either through ``Reranker.score_details`` or as a ``POST /v2/rerank`` to
the app in-process (httpx's ASGI transport, the service's whole path but the socket). Reports wall
seconds, the growth of the peak RSS over the RSS before the request (``ru_maxrss``), and the RSS
after it. A child still running after ``--timeout`` seconds is stopped and reported as such.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_long_query.py [--timeout 300]
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
CASES = [("reranker", 200), ("service", 200), ("reranker", 1000), ("service", 1000)]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(model: str, path: str, documents: int) -> dict:
    """One request in this process; the numbers as a dict."""
    import asyncio

    from genrank import Reranker
    from genrank.engines.hf import TransformersEngine

    reranker = Reranker(engine=TransformersEngine(model, device="cpu"), max_length=1024)
    docs = ["short doc"] * documents
    reranker.score_details([("warm up", "the engine")])
    before = rss_mb()
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
    return {"path": path, "documents": documents, "ok": ok, "seconds": round(seconds, 2),
            "peak_rss_growth_mb": round(peak - before, 1), "rss_after_mb": round(rss_mb(), 1),
            "rss_before_mb": round(before, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=300, help="seconds a case may take before it is stopped")
    ap.add_argument("--case", nargs=3, metavar=("MODEL", "PATH", "DOCUMENTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        model, path, documents = args.case
        print(json.dumps(run_case(model, path, int(documents))))
        return 0

    import genrank
    from tiny_model import build_tiny_model

    print(f"genrank from {Path(genrank.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "tiny-qwen2"))
        for path, documents in CASES:
            try:
                out = subprocess.run([sys.executable, __file__, "--case", model, path, str(documents)],
                                     capture_output=True, text=True, timeout=args.timeout)
                row = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else \
                    {"path": path, "documents": documents, "error": out.stderr.strip().splitlines()[-1:]}
            except subprocess.TimeoutExpired:
                row = {"path": path, "documents": documents, "seconds": f"> {args.timeout:g} (stopped)"}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

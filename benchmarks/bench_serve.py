"""Throughput and latency of ``genrank serve`` under concurrent clients, with and without batching across requests.

Starts ``genrank serve`` (transformers engine; the tests' tiny model unless ``--model``) twice:
with its default batching (pairs of concurrent requests scored in shared engine calls) and with
``--max-batch-pairs 0`` (one request per engine call), or with ``--compare share-prefix``, with
the driver's shared-prefix prefill (the default) and with ``-E share_prefix=false``, alternately, ``--rounds`` times each (the
machine may be shared: the best round of each is the least disturbed). Each time ``--clients``
concurrent clients (64) each send ``--requests`` Cohere v2 rerank requests of 10-50 documents
(random, seeded), one after another over a keep-alive connection. Reports pairs/s, request
latency p50/p99, the engine calls the server made (from its /metrics) and the machine's load
average; every answer is checked to hold a score for each of its documents.

Run:  python benchmarks/bench_serve.py [--clients 64] [--requests 2] [--rounds 2] [--model DIR]
                                      [--compare batching|share-prefix] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from report import report

ROOT = Path(__file__).resolve().parent.parent
WORDS = """the novel author wrote published prize river city museum history science apple fruit tree orange
music film game player team season record album band train station bridge tower garden king queen war peace ocean
island mountain forest desert animal bird fish insect planet star moon sun energy water fire stone metal glass paper
bread wine cheese coffee tea market bank school church""".split()

MODES = {  # --compare: mode name -> extra server arguments
    "batching": {"batched": [], "unbatched": ["--max-batch-pairs", "0"]},
    "share-prefix": {"shared": [], "unshared": ["-E", "share_prefix=false"]},
}


def workload(clients: int, requests: int, low: int, high: int, seed: int = 0) -> list[list[dict]]:
    """Per client, its request bodies: a query and ``low``-``high`` short documents each."""
    rng = random.Random(seed)

    def passage() -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(12, 30))).capitalize() + "."

    return [[{"model": "bench", "query": " ".join(rng.choices(WORDS, k=6)) + "?",
              "documents": [passage() for _ in range(rng.randint(low, high))]} for _ in range(requests)]
            for _ in range(clients)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "genrank.cli", "serve", "--model", model, "--engine", "hf",
                                 "--port", str(port), "--request-timeout", "3600", "--max-queue-pairs", "1000000",
                                 *extra], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"genrank serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("genrank serve did not start in 600 s")
        time.sleep(0.2)


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


async def run_clients(url: str, work: list[list[dict]]) -> tuple[list[float], float]:
    """Latencies of all requests (seconds) and the wall time of the whole load."""
    latencies: list[float] = []

    async def client(bodies: list[dict]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=3600) as c:
            for body in bodies:
                start = time.perf_counter()
                r = await c.post("/v2/rerank", json=body)
                latencies.append(time.perf_counter() - start)
                r.raise_for_status()
                if sorted(x["index"] for x in r.json()["results"]) != list(range(len(body["documents"]))):
                    raise AssertionError("an answer does not score each of its documents once")

    start = time.perf_counter()
    await asyncio.gather(*(client(bodies) for bodies in work))
    return latencies, time.perf_counter() - start


def measure(model: str, extra: list[str], work: list[list[dict]], log: Path) -> dict:
    proc, url = start_server(model, extra, log)
    try:
        httpx.post(f"{url}/v2/rerank", json=work[0][0], timeout=600).raise_for_status()  # warm-up
        before = metrics(url)
        load_before = os.getloadavg()
        latencies, seconds = asyncio.run(run_clients(url, work))
        after = metrics(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    pairs = sum(len(b["documents"]) for bodies in work for b in bodies)
    calls = after["genrank_batch_requests_count"] - before["genrank_batch_requests_count"]
    return {
        "server_args": extra, "requests": len(latencies), "pairs": pairs, "seconds": round(seconds, 2),
        "pairs_per_s": round(pairs / seconds, 1),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)) * 1000),
        "latency_p99_ms": round(float(np.percentile(latencies, 99)) * 1000),
        "engine_calls": int(calls),
        "requests_per_call": round((after["genrank_batch_requests_sum"] - before["genrank_batch_requests_sum"]) / calls, 2),
        "prompts_per_call": round((after["genrank_batch_prompts_sum"] - before["genrank_batch_prompts_sum"]) / calls, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "server_exit_code": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: build the tests' tiny model)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--min-docs", type=int, default=10)
    parser.add_argument("--max-docs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternating")
    parser.add_argument("--compare", choices=sorted(MODES), default="batching", help="the two server setups to compare")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_model import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        work = workload(args.clients, args.requests, args.min_docs, args.max_docs)
        modes = MODES[args.compare]
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for n in range(args.rounds):
            for mode, extra in modes.items():
                runs[mode].append(measure(model, extra, work, Path(tmp) / f"{mode}-{n}.log"))
                print(f"{mode} round {n}: {runs[mode][-1]['pairs_per_s']} pairs/s", file=sys.stderr)
    best = {mode: max(r, key=lambda x: x["pairs_per_s"]) for mode, r in runs.items()}
    first, second = modes
    report({"benchmark": "genrank serve", "model": args.model or "tests/tiny_model.py", "engine": "hf",
            "clients": args.clients, "requests_per_client": args.requests,
            "documents_per_request": [args.min_docs, args.max_docs], "cpus": os.cpu_count(),
            "python": platform.python_version(), "best": best, "runs": runs,
            "{}_over_{}".format(*modes): round(best[first]["pairs_per_s"] / best[second]["pairs_per_s"], 2)},
           args.out)


if __name__ == "__main__":
    main()

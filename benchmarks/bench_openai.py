"""Throughput and client CPU of the OpenAI-compatible driver vs the lb-reranker card's recipe.

Starts the local test server (tests/openai_test_server.py --fixed: the same answer to every
request, so it costs little CPU) in its own process with a fixed latency per request (default
20 ms), then scores the same pairs in the same run with

  (a) the card's recipe: ``multiprocessing.Pool(16)`` mapping a synchronous ``openai.OpenAI``
      client's ``chat.completions.create(max_tokens=1, logprobs=True, top_logprobs=5)`` over the
      pairs (tokens parsed with ``int`` only when they are digits, so it survives the server's
      non-digit tokens);
  (b) genrank: ``Reranker(engine="openai", concurrency=256)`` in chat mode, ``top_logprobs=20``.

Reports pairs/s and client CPU milliseconds per request (user+system time of the client
processes, the card's 16 workers included) and, on Linux, the server's CPU per request (the
two share the machine's cores).

Run:  python benchmarks/bench_openai.py [--pairs 3000] [--latency 0.02] [--concurrency 256] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import openai

from genrank import Reranker

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = ("Given a query and a piece of text, output a score of 1-7 based on how related the query is to the text. "
          "1 means least related and 7 is most related.")
_client: openai.OpenAI | None = None


def workload(n: int) -> list[tuple[str, str]]:
    return [(f"What is the scientific name of apples? ({i})",
             f"An apple is a round, edible fruit produced by an apple tree (Malus spp.). Passage {i}.") for i in range(n)]


def _card_init(base_url: str) -> None:
    global _client
    _client = openai.OpenAI(base_url=base_url, api_key="benchmark")


def _card_score(pair: tuple[str, str]) -> float:
    # The card's get_reranker_score, verbatim except that non-digit tokens are skipped.
    question, context = pair
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"<<<Query>>>\n{question}\n\n<<<Context>>>\n{context}"}]
    completion = _client.chat.completions.create(model="test-model", messages=messages, max_tokens=1,
                                                 temperature=0.0, logprobs=True, top_logprobs=5)
    logprobs = completion.choices[0].logprobs.content[0].top_logprobs
    return sum(int(x.token) * math.exp(x.logprob) for x in logprobs if x.token.isdigit())


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float | None:
    """User+system CPU of a running process (Linux /proc), for the server's share; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def with_server_cpu(server_pid: int, run, *args) -> dict:
    before = process_cpu_seconds(server_pid)
    result = run(*args)
    after = process_cpu_seconds(server_pid)
    if before is not None and after is not None:
        result["server_cpu_ms_per_request"] = 1000 * (after - before) / result["pairs"]
    return result


def run_card(base_url: str, pairs: list[tuple[str, str]]) -> dict:
    children0, start = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    self0 = cpu_seconds(resource.RUSAGE_SELF)
    pool = Pool(processes=16, initializer=_card_init, initargs=(base_url,))
    scores = list(pool.imap(_card_score, pairs))
    wall = time.perf_counter() - start
    pool.close()
    pool.join()  # reaped workers' CPU shows in RUSAGE_CHILDREN
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - children0 + cpu_seconds(resource.RUSAGE_SELF) - self0
    assert len(scores) == len(pairs)
    return {"pairs": len(pairs), "seconds": wall, "pairs_per_s": len(pairs) / wall,
            "cpu_ms_per_request": 1000 * cpu / len(pairs)}


def run_genrank(base_url: str, pairs: list[tuple[str, str]], concurrency: int) -> dict:
    rr = Reranker("test-model", engine="openai", base_url=base_url, api_key="benchmark",
                  concurrency=concurrency, top_logprobs=20, show_progress=False)
    rr.score_details(pairs[:concurrency])  # warm-up: server detection, connection pool
    cpu0, start = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    result = rr.score_details(pairs)
    wall = time.perf_counter() - start
    cpu = cpu_seconds(resource.RUSAGE_SELF) - cpu0
    assert not result.errors, result.errors
    return {"pairs": len(pairs), "seconds": wall, "pairs_per_s": len(pairs) / wall,
            "cpu_ms_per_request": 1000 * cpu / len(pairs), "concurrency": concurrency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.02, help="server latency per request, seconds")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_test_server.py"),
                               "--latency", str(args.latency), "--fixed"], stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        pairs = workload(args.pairs)
        card = with_server_cpu(server.pid, run_card, base_url, pairs)
        ours = with_server_cpu(server.pid, run_genrank, base_url, pairs, args.concurrency)
    finally:
        server.terminate()
        server.wait(10)
    results = {"latency_s": args.latency, "cpus": os.cpu_count(), "python": platform.python_version(),
               "openai": openai.__version__, "card_recipe": card, "genrank": ours,
               "speedup": ours["pairs_per_s"] / card["pairs_per_s"]}
    print(f"card recipe (Pool(16), sync client): {card['pairs_per_s']:7.0f} pairs/s  "
          f"{card['cpu_ms_per_request']:.2f} ms CPU/request (server {card.get('server_cpu_ms_per_request', math.nan):.2f})")
    print(f"genrank (concurrency {args.concurrency}):      {ours['pairs_per_s']:7.0f} pairs/s  "
          f"{ours['cpu_ms_per_request']:.2f} ms CPU/request (server {ours.get('server_cpu_ms_per_request', math.nan):.2f})")
    print(f"speedup: {results['speedup']:.1f}x  ({args.pairs} pairs, {args.latency * 1000:g} ms server latency, "
          f"{os.cpu_count()} CPUs)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""One slow pair in a hundred vs none: ``genrank score --engine openai`` (the real CLI) over 20,000 pairs.

Starts the local test server (tests/openai_test_server.py --fixed: the same answer to every
request, except to prompts with a fault marker) in its own process with a fixed latency per
request (default 20 ms), writes the pairs twice: once as they are, once with every 100th document
carrying ``[[fault:slow:1]]`` (its first request is answered after ``--slow`` seconds, past the
client's ``timeout``; the next, a backup or a retry, is answered at once), then runs ``python -m
genrank.cli score`` on each file and reports pairs/s (from the command's summary line: scoring
time) and wall time (the whole command), and the ratio faulty/fault-free. The goal: within 20% of
fault-free. ``-E backup_requests=0`` measures the driver without backup requests.

The CLI subprocess imports genrank from PYTHONPATH when set (e.g. a worktree of an older commit,
to compare), else the installed one. ``-E KEY=VALUE`` passes engine options (e.g. ``-E
max_calls_in_flight=4``).

Run:  python benchmarks/bench_slow_pair.py [--pairs 20000] [--latency 0.02] [--timeout 1] [--slow 3]
          [--chunk-size 1024] [--repeats 1] [-E KEY=VALUE ...] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"genrank score: ([\d,]+) pairs scored, ([\d,]+) failed.* in ([\d.]+) s")


def write_pairs(path: Path, n: int, slow_every: int | None, run: int) -> None:
    """``n`` pairs; with ``slow_every``, one document in that many is slow on its first attempt.

    The server counts attempts per prompt, so each run (``run``) has prompts of its own.
    """
    with path.open("w") as f:
        for i in range(n):
            document = f"An apple is a round, edible fruit produced by an apple tree (Malus spp.). Passage {i}.{run}"
            if slow_every and i % slow_every == slow_every // 2:
                document += " [[fault:slow:1]]"
            f.write(json.dumps({"id": i, "query": f"What is the scientific name of apples? ({i % 500})",
                                "document": document}) + "\n")


def score(base_url: str, pairs: Path, out: Path, args: argparse.Namespace) -> dict:
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "genrank.cli", "score", str(pairs), "-o", str(out), "-q", "-e", "openai",
               "-m", "test-model", "--base-url", base_url, "--chunk-size", str(args.chunk_size),
               "-E", f"timeout={args.timeout}"]
    for option in args.engine_arg or []:
        command += ["-E", option]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=out.parent, check=False)  # cwd: not ROOT,
    # so that genrank comes from PYTHONPATH when it is set
    wall = time.perf_counter() - start
    found = SUMMARY.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"genrank score failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    pairs_scored, failed, seconds = int(found[1].replace(",", "")), int(found[2].replace(",", "")), float(found[3])
    return {"pairs": pairs_scored, "failed": failed, "seconds": seconds, "pairs_per_s": pairs_scored / seconds,
            "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.02, help="server latency per request, seconds")
    parser.add_argument("--timeout", type=float, default=1.0, help="the client's timeout per request, seconds")
    parser.add_argument("--slow", type=float, default=3.0, help="how long a slow first attempt takes, seconds")
    parser.add_argument("--slow-every", type=int, default=100, help="one document in this many is slow")
    parser.add_argument("--chunk-size", type=int, default=1024, help="genrank score --chunk-size")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; the median is reported")
    parser.add_argument("--engine-arg", "-E", action="append", metavar="KEY=VALUE", help="engine option")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_test_server.py"), "--fixed",
                               "--latency", str(args.latency), "--slow-seconds", str(args.slow)],
                              stdout=subprocess.PIPE, text=True)
    runs: dict[str, list[dict]] = {"fault_free": [], "one_percent_slow": []}
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            pairs, scores = Path(tmp, "pairs.jsonl"), Path(tmp, "scores.jsonl")
            for run in range(args.repeats):
                for name, slow_every in (("fault_free", None), ("one_percent_slow", args.slow_every)):
                    write_pairs(pairs, args.pairs, slow_every, run)  # alternated: load drifts hit both alike
                    runs[name].append(score(base_url, pairs, scores, args))
    finally:
        server.terminate()
        server.wait(10)
    median = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    ratio = median["one_percent_slow"]["pairs_per_s"] / median["fault_free"]["pairs_per_s"]
    results = {"pairs": args.pairs, "latency_s": args.latency, "timeout_s": args.timeout, "slow_s": args.slow,
               "slow_every": args.slow_every, "chunk_size": args.chunk_size, "engine_args": args.engine_arg or [],
               "cpus": os.cpu_count(), "load_average": os.getloadavg(), "runs": runs, "median": median,
               "ratio": ratio}
    for name, m in median.items():
        print(f"{name:17s} {m['pairs_per_s']:7.0f} pairs/s  ({m['seconds']:.1f} s scoring, {m['wall_s']:.1f} s wall, "
              f"{m['failed']:.0f} failed)")
    print(f"ratio slow/fault-free: {ratio:.2f}  ({args.pairs} pairs, 1 in {args.slow_every} first attempts "
          f"{args.slow:g} s against a {args.timeout:g} s timeout, {args.latency * 1000:g} ms latency, "
          f"load average {os.getloadavg()[0]:.2f})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""``genrank score --ray`` against one process, and what a killed driver costs.

1. Throughput: the same Parquet input scored by ``genrank.batch.score_file`` in this process and by
   ``genrank.ray.score_files_ray`` with 1 and 2 actors, alternated for ``--rounds`` rounds, each
   with the stand-in engine of tests/standin_engine.py (``--seconds-per-pair`` of sleep per pair,
   the time a GPU would take; no CPU used, so 2 actors can overlap even on 2 cores). Reports the
   median pairs/s of each, wall time from call to return (Ray: probe, id check, checkpoint and
   summary included).
2. Kill, ``--kills`` times: a driver scoring the input (``--kill-actors`` actors) is SIGKILLed once
   ~40% of the rows are committed; a new driver resumes. Reports rows committed at the kill and what
   the kill cost, in blocks per actor: blocks scored but not committed (scored by the engines in
   both runs together, minus the input's rows), and blocks started but not committed (the same
   count from when calls start: it adds the blocks the kill cut short, counted whole).

Run:  python benchmarks/bench_ray.py [--pairs 4000] [--chunk-size 200] [--seconds-per-pair 0.005] [--rounds 3] [--kills 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
TESTS = str(ROOT / "tests")
sys.path.insert(0, TESTS)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, str(ROOT), os.environ.get("PYTHONPATH")) if p)

import ray  # noqa: E402
from standin_engine import scored_pairs, standin_reranker  # noqa: E402

from genrank.batch import score_file  # noqa: E402
from genrank.ray import score_files_ray  # noqa: E402


def committed(output: Path) -> int:
    ckpt = Path(f"{output}.ckpt")
    files = [f for f in ckpt.glob("*.parquet") if not f.name.endswith(".pending.parquet")] if ckpt.exists() else []
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def kill_at(src: Path, out: Path, log: str, fraction: float, pairs: int, args: argparse.Namespace) -> int:
    """Run a driver in a subprocess and SIGKILL it once ``fraction`` of the rows are committed."""
    script = (f"import functools, ray; from standin_engine import standin_reranker; from genrank.ray import "
              f"score_files_ray; ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False); "
              f"score_files_ray({str(src)!r}, {str(out)!r}, functools.partial(standin_reranker, "
              f"seconds_per_pair={args.seconds_per_pair}, log={log!r}), chunk_size={args.chunk_size}, "
              f"concurrency={args.kill_actors}, num_cpus=0.5)")
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=TESTS, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    while committed(out) < fraction * pairs and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    return committed(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--chunk-size", type=int, default=200)
    p.add_argument("--seconds-per-pair", type=float, default=0.005)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--kill-actors", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    args = p.parse_args()

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=300 << 20)
    make = functools.partial(standin_reranker, seconds_per_pair=args.seconds_per_pair)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in.parquet"
        pq.write_table(pa.Table.from_pylist([{"id": n, "query": f"query {n % 50}", "document": f"document {n}"}
                                             for n in range(args.pairs)]), src)
        rates: dict[str, list[float]] = {"one process": [], "--ray, 1 actor": [], "--ray, 2 actors": []}
        for r in range(args.rounds):
            for name in rates:
                out = tmp / f"{r}-{name.replace(' ', '').replace(',', '')}"
                start = time.perf_counter()
                if name == "one process":
                    score_file(src, out.with_suffix(".parquet"), make(), chunk_size=args.chunk_size)
                else:
                    score_files_ray(src, out, make, chunk_size=args.chunk_size, concurrency=int(name[7]), num_cpus=0.5)
                rates[name].append(args.pairs / (time.perf_counter() - start))
        if args.rounds:
            print(f"{args.pairs:,} pairs, stand-in engine {args.seconds_per_pair * 1000:g} ms/pair, chunk {args.chunk_size}, "
                  f"{args.rounds} rounds alternated (median pairs/s; all rounds):")
            for name, values in rates.items():
                print(f"  {name:16} {statistics.median(values):8.0f}   {', '.join(f'{v:.0f}' for v in values)}")

        one_block_each = args.chunk_size * args.kill_actors
        print(f"kills at ~40% ({args.kill_actors} actors, chunk {args.chunk_size}), each resumed by a new driver:")
        for k in range(args.kills):
            out, log = tmp / f"killed-{k}", str(tmp / f"scored-{k}.log")
            done = kill_at(src, out, log, 0.4, args.pairs, args)
            summary = score_files_ray(src, out, functools.partial(standin_reranker, log=log,
                                                                  seconds_per_pair=args.seconds_per_pair),
                                      chunk_size=args.chunk_size, concurrency=args.kill_actors, num_cpus=0.5)
            scored, started = (scored_pairs(log, event) - args.pairs for event in ("scored", "started"))
            print(f"  {done:,} rows committed at the kill; the resume scored {summary.pairs:,}, skipped "
                  f"{summary.skipped:,}; lost per actor: {scored / one_block_each:.1f} blocks scored, "
                  f"{started / one_block_each:.1f} started")
    ray.shutdown()


if __name__ == "__main__":
    main()

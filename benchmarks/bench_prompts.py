"""Prompt building alone: CPU time per pair of ``PromptBuilder.build`` (render, tokenize, truncate).

Workload: ``--pairs`` pairs of a 5-12 word query and a 60-200 word document drawn from the tiny
test model's corpus, built in chunks of 1,024 with the default template and the tiny Qwen2
tokenizer of tests/tiny_model.py (Qwen2's pre-tokenizer regex and ChatML template). Reports the
best of ``--repeats`` runs in CPU microseconds per pair (``time.process_time``, so the Rust
tokenizer's threads count too; ``RAYON_NUM_THREADS=1`` makes it one core's work).

Run:  RAYON_NUM_THREADS=1 python benchmarks/bench_prompts.py [--pairs 20000] [--repeats 3]
      (``PYTHONPATH=<worktree of another commit>`` measures that commit's builder)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import genrank
from genrank import PromptBuilder, load_template


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    from tiny_model import CORPUS

    rng = np.random.default_rng(seed)
    words = CORPUS.split()

    def text(low: int, high: int) -> str:
        return " ".join(words[i] for i in rng.integers(0, len(words), int(rng.integers(low, high))))

    queries = [text(5, 13) + "?" for _ in range(n)]
    return queries, [text(60, 201) for _ in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=1024)
    args = ap.parse_args()

    from tiny_model import build_tiny_model
    from transformers import PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(build_tiny_model(Path(tmp) / "tiny-qwen2"))
    builder = PromptBuilder(load_template(), tokenizer, max_length=1024)
    queries, documents = make_pairs(args.pairs)
    builder.build(queries[:100], documents[:100])  # warm up
    best = float("inf")
    for _ in range(args.repeats):
        cpu = time.process_time()
        for start in range(0, args.pairs, args.chunk_size):
            builder.build(queries[start:start + args.chunk_size], documents[start:start + args.chunk_size])
        best = min(best, time.process_time() - cpu)
    print(json.dumps({
        "genrank": str(Path(genrank.__file__).parent), "pairs": args.pairs,
        "cpu_us_per_pair": round(best / args.pairs * 1e6, 1), "repeats": args.repeats,
        "tokenizer_threads": os.environ.get("RAYON_NUM_THREADS", "all"), "load_avg_1min": os.getloadavg()[0],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

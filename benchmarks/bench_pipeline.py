"""Host-side throughput of ``genrank score``: everything but the model, on 1 million pairs.

Pipeline measured: read JSONL -> validate -> render the prompt and cut it to ``max_length`` with a
real tokenizer (``PromptBuilder``) -> a stand-in engine that implements the engine protocol and
answers instantly -> scores -> write JSONL. Reports pairs/s, CPU seconds per 1k pairs, the share of
time spent in prompt building, and the process's peak resident memory (``ru_maxrss``).

Workload: ``--queries`` queries (5-12 words) with ``--pairs / --queries`` candidates each; documents of
log-normal length around ~150 tokens (110 words, sigma 0.5, 10-600 words) drawn from the tiny test
model's corpus. The tokenizer is the tiny Qwen2 byte-level BPE of tests/tiny_model.py (Qwen2's
pre-tokenizer regex and ChatML template), built on the fly, or ``--tokenizer PATH``.

Run:  python benchmarks/bench_pipeline.py [--pairs 1000000] [--chunk-size 1024] [--keep DIR] [--json]
      (``RAYON_NUM_THREADS=N`` caps the Rust tokenizer's threads, to see how it scales with cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from genrank import Engine, LabelLogprobs, Labels, Prompts, Reranker
from genrank.batch import score_file


class InstantEngine(Engine):
    """An engine without a model: label log-probs from each prompt's length, at once.

    With a tokenizer it takes token ids (as the in-process drivers do); without, the chat
    messages (as a server driver does: the server tokenizes).
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    @property
    def prompt_format(self):
        return "tokens" if self._tokenizer is not None else "chat"

    @property
    def tokenizer(self):
        return self._tokenizer

    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        if self._tokenizer is not None:
            lengths = np.fromiter(map(len, prompts.token_ids), dtype=np.float64, count=len(prompts))
        else:
            lengths = np.array([len(chat[-1]["content"]) for chat in prompts.chats()], dtype=np.float64)
        logits = -np.abs(np.arange(len(labels.texts))[None, :] - (lengths[:, None] % len(labels.texts)))
        return LabelLogprobs(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))


def make_input(path: Path, pairs: int, queries: int, seed: int = 0) -> None:
    """Write the workload as JSONL (streamed: memory stays small)."""
    from tiny_model import CORPUS

    rng = np.random.default_rng(seed)
    vocab = CORPUS.split()
    words = [vocab[i] for i in rng.integers(0, len(vocab), 4_000_000)]
    per_query = -(-pairs // queries)
    with open(path, "w", encoding="utf-8") as f:
        n = 0
        for q in range(queries):
            start = int(rng.integers(0, len(words) - 12))
            query = " ".join(words[start:start + int(rng.integers(5, 13))]) + "?"
            lines = []
            for _ in range(min(per_query, pairs - n)):
                length = int(np.clip(rng.lognormal(np.log(110), 0.5), 10, 600))
                start = int(rng.integers(0, len(words) - length))
                lines.append(json.dumps({"id": f"q{q}-d{n}", "query": query, "document": " ".join(words[start:start + length])}))
                n += 1
            f.write("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=4000)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the tiny test model's)")
    ap.add_argument("--chat", action="store_true",
                    help="no tokenizer: the engine takes chat messages (a server driver's path); isolates the "
                         "rest of the pipeline")
    ap.add_argument("--keep", default=None, help="folder for input and output (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args()

    # PreTrainedTokenizerFast, not AutoTokenizer: the auto classes import torch (~480 MB of RSS that
    # a tokens engine's process has anyway, but that is not the pipeline's).
    from transformers import PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.tokenizer is None:
            from tiny_model import build_tiny_model

            args.tokenizer = str(build_tiny_model(work / "tiny-qwen2"))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
        src, out = work / f"pairs-{args.pairs}.jsonl", work / "scores.jsonl"
        if not src.exists():
            t = time.perf_counter()
            make_input(src, args.pairs, args.queries)
            print(f"wrote {src} ({src.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        out.unlink(missing_ok=True)

        reranker = Reranker(engine=InstantEngine(None if args.chat else tokenizer), max_length=args.max_length)
        build, building = reranker.builder.build, [0.0, 0]

        def timed_build(*a, **k):
            t = time.perf_counter()
            prompts = build(*a, **k)
            building[0] += time.perf_counter() - t
            building[1] += int(sum(map(len, prompts.token_ids or [])))
            return prompts

        reranker.builder.build = timed_build
        cpu = time.process_time()
        summary = score_file(src, out, reranker, chunk_size=args.chunk_size, show_progress=not args.json)
        cpu = time.process_time() - cpu
        result = {
            "pairs": summary.pairs, "failed": summary.failed, "seconds": round(summary.seconds, 1),
            "pairs_per_s": round(summary.pairs_per_second), "cpu_s_per_1k_pairs": round(1000 * cpu / summary.pairs, 3),
            "prompt_build_share": round(building[0] / summary.seconds, 3),
            "mean_prompt_tokens": None if args.chat else round(building[1] / summary.pairs, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "chunk_size": args.chunk_size, "cpus": os.cpu_count(),
            "tokenizer_threads": int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count()), "load_avg_1min": os.getloadavg()[0],
            "python": platform.python_version(), "tokenizer": None if args.chat else Path(args.tokenizer).name,
        }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared-prefix prefill in the transformers driver: pairs/s with and without, and equal scores.

A randomly initialised Qwen2 model (float32, CPU; hidden 512, one layer by default, ``--shape qwen2.5-0.5b``
for Qwen2.5-0.5B's full shape) with the tests' tokenizer scores ``--queries`` queries x ``--docs``
documents of about ``--doc-tokens`` tokens each under the lb-reranker template, through the same
``TransformersEngine`` with ``share_prefix`` on and off, alternately, ``--rounds`` times each. The
machine may be shared: medians are reported, with the load average, and pairs per CPU-second of
this process (``time.process_time``; with one torch thread it counts the work done, whatever else
runs) next to pairs per wall-clock second. Every round checks that both give the same label
log-probabilities. ``--save-model DIR`` writes the model and tokenizer there
too (for ``bench_serve.py --model DIR``).

Run:  python benchmarks/bench_prefix.py [--doc-tokens 100 250] [--rounds 3] [--threads 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report import report
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from genrank import Reranker  # noqa: E402
from genrank.engines.hf import TransformersEngine  # noqa: E402
from genrank.engines.prefix import prefix_groups  # noqa: E402

SHAPES = {  # hidden, layers, attention heads, key/value heads, MLP width
    "hidden512": dict(hidden_size=512, num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=2,
                      intermediate_size=2048),
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864),
}
WORDS = """the novel author wrote published prize river city museum history science apple fruit tree orange
music film game player team season record album band train station bridge tower garden king queen war peace ocean
island mountain forest desert animal bird fish insect planet star moon sun energy water fire stone metal glass paper
bread wine cheese coffee tea market bank school church""".split()


def random_model(shape: str, tokenizer, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), head_dim=64, tie_word_embeddings=True, max_position_embeddings=4096,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    return Qwen2ForCausalLM(config).eval()


def workload(tokenizer, queries: int, docs: int, doc_tokens: int, query_tokens: int = 12,
             seed: int = 0) -> list[tuple[str, str]]:
    """``queries`` x ``docs`` pairs, each document about ``doc_tokens`` tokens of the tokenizer."""
    rng = random.Random(seed)

    def text(tokens: int) -> str:
        words: list[str] = []
        while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) < tokens:
            words += rng.choices(WORDS, k=max(1, (tokens - len(words)) // 2))
        return " ".join(words).capitalize() + "."

    return [(q, text(doc_tokens)) for q in (text(query_tokens) + "?" for _ in range(queries)) for _ in range(docs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="hidden512")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--docs", type=int, default=50, help="documents per query")
    parser.add_argument("--doc-tokens", type=int, nargs="+", default=[100, 250])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--save-model", default=None, help="also write the model and tokenizer to this directory")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(Path(tmp) / "tiny"))
    model = random_model(args.shape, tokenizer)
    if args.save_model:
        model.save_pretrained(args.save_model)
        tokenizer.save_pretrained(args.save_model)
    engines = {mode: TransformersEngine(model, tokenizer=tokenizer, device="cpu", share_prefix=mode == "shared")
               for mode in ("shared", "unshared")}
    assert engines["shared"].share_prefix
    results = []
    load_before = os.getloadavg()
    for doc_tokens in args.doc_tokens:
        rr = Reranker(engine=engines["shared"])
        prompts = rr.prepare(workload(tokenizer, args.queries, args.docs, doc_tokens))
        groups, _ = prefix_groups(prompts, min_rows=2, min_prefix=1)
        lengths = np.array([len(r) for r in prompts.token_ids])
        prefix_tokens = sum(g.prefix * len(g.rows) for g in groups)
        seconds: dict[str, list[float]] = {"shared": [], "unshared": []}
        cpu: dict[str, list[float]] = {"shared": [], "unshared": []}
        values: dict[str, np.ndarray] = {}
        for n in range(args.rounds):
            for mode in (("shared", "unshared") if n % 2 == 0 else ("unshared", "shared")):
                start, start_cpu = time.perf_counter(), time.process_time()
                values[mode] = engines[mode].label_logprobs(prompts, rr.builder.labels).values
                seconds[mode].append(time.perf_counter() - start)
                cpu[mode].append(time.process_time() - start_cpu)
                print(f"{doc_tokens} tokens, {mode} round {n}: {len(prompts) / seconds[mode][-1]:.1f} pairs/s, "
                      f"{len(prompts) / cpu[mode][-1]:.1f} pairs/CPU-s (load {os.getloadavg()[0]:.1f})",
                      file=sys.stderr)
            difference = float(np.abs(values["shared"] - values["unshared"]).max())
            assert difference <= 1e-5, f"shared and unshared label log-probabilities differ by {difference}"
        pairs_per_s = {mode: round(len(prompts) / statistics.median(s), 2) for mode, s in seconds.items()}
        pairs_per_cpu_s = {mode: round(len(prompts) / statistics.median(s), 2) for mode, s in cpu.items()}
        results.append({
            "doc_tokens_target": doc_tokens, "pairs": len(prompts),
            "prompt_tokens_mean": round(float(lengths.mean()), 1),
            "shared_prefix_tokens_mean": round(float(np.mean([g.prefix for g in groups])), 1),
            "prefix_share_of_tokens": round(prefix_tokens / int(lengths.sum()), 3),
            "pairs_per_s_median": pairs_per_s,
            "pairs_per_s_runs": {m: [round(len(prompts) / x, 2) for x in s] for m, s in seconds.items()},
            "shared_over_unshared": round(pairs_per_s["shared"] / pairs_per_s["unshared"], 2),
            "pairs_per_cpu_s_median": pairs_per_cpu_s,
            "pairs_per_cpu_s_runs": {m: [round(len(prompts) / x, 2) for x in s] for m, s in cpu.items()},
            "shared_over_unshared_cpu": round(pairs_per_cpu_s["shared"] / pairs_per_cpu_s["unshared"], 2),
            "max_abs_difference": difference,
        })
    report({"benchmark": "shared-prefix prefill, transformers driver", "device": "cpu", "dtype": "float32",
            "model": f"random Qwen2, shape {args.shape}: {SHAPES[args.shape]}", "vocabulary": len(tokenizer),
            "template": "lb-reranker-v1", "queries": args.queries, "documents_per_query": args.docs,
            "threads": args.threads, "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before], "python": platform.python_version(),
            "torch": torch.__version__, "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "results": results}, args.out)


if __name__ == "__main__":
    main()

"""GPU throughput of the transformers driver vs the seed-style generate() path.

Workload (issue 2): a Qwen2.5-0.5B-shaped model with random bf16 weights; 2,048 pairs whose prompts
share a system+query prefix of 60-90 tokens per query and carry a document of log-normal length
around 150 tokens, capped at 480. Compares

  (a) seed-style: ``model.generate(max_new_tokens=1)`` with top-14 log-probs, batches of 64 in
      input order, left padding with an attention mask (what the lb-reranker card does);
  (b) genrank's ``TransformersEngine.label_logprobs`` (length-bucketed prefill, last position only).

Run:  python benchmarks/bench_hf_gpu.py [--pairs 2048] [--compile] [--out results.json]
"""

from __future__ import annotations

import argparse
import platform
import time
from types import SimpleNamespace

import numpy as np
import torch
from report import report
from transformers import AutoModelForCausalLM, Qwen2Config

from genrank import Labels, Prompts, load_template
from genrank.engines.hf import TransformersEngine

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, tie_word_embeddings=True)
LABEL_IDS = tuple(range(16, 23))  # "1".."7" in the Qwen2 vocabulary


def workload(n_pairs: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    rows: list[list[int]] = []
    while len(rows) < n_pairs:
        prefix = rng.integers(1000, 150000, int(rng.integers(60, 91))).tolist()
        for _ in range(int(rng.integers(5, 40))):
            doc_len = int(min(480, max(8, rng.lognormal(np.log(150), 0.5))))
            rows.append(prefix + rng.integers(1000, 150000, doc_len).tolist() + [151644, 77091, 198])
    return rows[:n_pairs]


def prompts_of(rows: list[list[int]]) -> Prompts:
    n = len(rows)
    return Prompts(load_template(), [""] * n, [""] * n, [None] * n, None, rows, np.zeros(n, dtype=bool))


@torch.inference_mode()
def seed_style(model, rows: list[list[int]], batch: int = 64) -> np.ndarray:
    dev = model.device
    out = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        width = max(map(len, chunk))
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for n, r in enumerate(chunk):  # left padding, as generate() wants
            ids[n, width - len(r):] = torch.tensor(r)
            mask[n, width - len(r):] = 1
        gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=1, do_sample=False,
                             return_dict_in_generate=True, output_scores=True, pad_token_id=0)
        top = torch.log_softmax(gen.scores[0].float(), -1).topk(14)
        out.append(top.values.cpu().numpy())
    return np.concatenate(out)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-batch-tokens", type=int, default=65536)
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder (dynamic shapes)")
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only to smoke-test the script")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_05B), dtype=torch.bfloat16).to(args.device).eval()
    rows = workload(args.pairs)
    tokens = sum(map(len, rows))
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)  # token ids are synthetic
    engine = TransformersEngine(model, tokenizer=tokenizer, device=args.device,
                                max_batch_tokens=args.max_batch_tokens, compile=args.compile)
    prompts, labels = prompts_of(rows), Labels(tuple("1234567"), LABEL_IDS)

    engine.label_logprobs(prompts_of(rows[:256]), labels)  # warm-up (and compile)
    seed_style(model, rows[:64])
    t_seed = timed(lambda: seed_style(model, rows), args.repeats)
    t_genrank = timed(lambda: engine.label_logprobs(prompts, labels), args.repeats)

    # Agreement: genrank's label log-probs vs a float32 full-vocabulary log-softmax of the same rows.
    check = rows[:32]
    ours = engine.label_logprobs(prompts_of(check), labels).values
    with torch.inference_mode():
        ref = [torch.log_softmax(model(torch.tensor([r], device=args.device)).logits[0, -1].float(), -1)[list(LABEL_IDS)]
               for r in check]
    max_diff = float(np.abs(ours - torch.stack(ref).cpu().numpy()).max())

    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device, "torch": torch.__version__, "python": platform.python_version(),
        "pairs": len(rows), "tokens": tokens, "mean_tokens_per_pair": tokens / len(rows),
        "compile": args.compile, "max_batch_tokens": args.max_batch_tokens,
        "seed_style_pairs_per_s": len(rows) / t_seed, "genrank_pairs_per_s": len(rows) / t_genrank,
        "speedup": t_seed / t_genrank, "genrank_tokens_per_s": tokens / t_genrank,
        "max_abs_logprob_diff_vs_single_row": max_diff,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()

"""Throughput of genrank's vLLM driver (generate and pooling paths) vs the lb-reranker card's recipe.

Workload: ``--queries`` queries x ``--docs`` documents each (synthetic English text; documents of
log-normal length around ``--doc-words`` words), scored through ``Reranker.score`` with

  generate  VLLMEngine: pre-tokenised prompts, grouped by query, logprob_token_ids = the labels;
  pooling   VLLMEngine(method="pooling"): classifier over the label rows, softmax over the labels;
  card      the card's code: LLM.chat + SamplingParams(temperature=0, logprobs=14, max_tokens=1).

Run on a GPU:  python benchmarks/bench_vllm.py --model lightblue/lb-reranker-0.5B-v1.0
Extra vLLM options: -E KEY=VALUE (JSON values), e.g. -E gpu_memory_utilization=0.5.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from report import report

WORDS = ("the of and a to in is was for on that by with as from at his an are which it be this were had "
         "novel court river author apple prize ocean whale justice movie book city history science water "
         "energy system market health policy research model data network language music game season").split()


def workload(queries: int, docs: int, doc_words: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(queries):
        query = " ".join(rng.choice(WORDS, int(rng.integers(6, 16)))) + "?"
        for _ in range(docs):
            n = int(min(4 * doc_words, max(8, rng.lognormal(np.log(doc_words), 0.5))))
            pairs.append((query, " ".join(rng.choice(WORDS, n)) + "."))
    return pairs


def best_time(fn, repeats: int, llm) -> float:
    """Best wall time of ``fn``, each run starting from an empty prefix cache."""
    best = float("inf")
    for _ in range(repeats):
        llm.reset_prefix_cache()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--docs", type=int, default=32, help="documents per query")
    ap.add_argument("--doc-words", type=int, default=120)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default="generate,pooling,card", help="comma-separated: generate, pooling, card")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("-E", dest="options", action="append", default=[], metavar="KEY=VALUE", help="vllm.LLM option")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import vllm

    from genrank import Reranker, load_template
    from genrank.engines.vllm import VLLMEngine

    options = {"dtype": args.dtype, "max_model_len": args.max_length + 8, "seed": 0}
    for item in args.options:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    paths = args.paths.split(",")
    if "pooling" in paths and len(paths) > 1:  # two engines in one process: leave room for the second
        options.setdefault("gpu_memory_utilization", 0.4)
    pairs = workload(args.queries, args.docs, args.doc_words)
    result = {"model": args.model, "vllm": vllm.__version__, "python": platform.python_version(),
              "pairs": len(pairs), "queries": args.queries, "max_length": args.max_length, "llm_options": options,
              "repeats": args.repeats}
    print(json.dumps(result, indent=2))
    scores = {}

    if "generate" in paths or "card" in paths:
        llm = vllm.LLM(args.model, **options)
        rr = Reranker(engine=VLLMEngine(llm=llm), max_length=args.max_length)
        tokens = sum(map(len, rr.builder.build([q for q, _ in pairs], [d for _, d in pairs]).token_ids))
        result["tokens"] = tokens
        if "generate" in paths:
            rr.score(pairs[: args.docs])  # warm-up
            t = best_time(lambda: scores.__setitem__("generate", rr.score(pairs)), args.repeats, llm)
            result["generate"] = {"pairs_per_s": len(pairs) / t, "tokens_per_s": tokens / t, "seconds": t}
        if "card" in paths:
            template = load_template()
            chats = [template.messages(q, d, None) for q, d in pairs]
            params = vllm.SamplingParams(temperature=0.0, logprobs=14, max_tokens=1)
            llm.chat(chats[: args.docs], params, use_tqdm=False)
            t = best_time(lambda: llm.chat(chats, params, use_tqdm=False), args.repeats, llm)
            result["card"] = {"pairs_per_s": len(pairs) / t, "tokens_per_s": tokens / t, "seconds": t}
        del rr, llm

    if "pooling" in paths:
        rr = Reranker(engine=VLLMEngine(args.model, method="pooling", **options), max_length=args.max_length)
        rr.score(pairs[: args.docs])  # builds the pooling LLM; warm-up
        tokens = result.get("tokens") or sum(map(len, rr.builder.build([q for q, _ in pairs], [d for _, d in pairs]).token_ids))
        t = best_time(lambda: scores.__setitem__("pooling", rr.score(pairs)), args.repeats, rr.engine.llm)
        result["pooling"] = {"pairs_per_s": len(pairs) / t, "tokens_per_s": tokens / t, "seconds": t}

    if "generate" in scores and "pooling" in scores:
        result["max_abs_score_diff_pooling_vs_generate"] = float(np.abs(scores["generate"] - scores["pooling"]).max())
    report(result, args.out)


if __name__ == "__main__":
    main()

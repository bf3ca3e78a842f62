"""Throughput of genrank's LMDeploy driver vs the lb-reranker card's LMDeploy recipe (needs CUDA).

Workload: ``--queries`` queries x ``--docs`` documents each (synthetic English text, as in
bench_vllm.py), scored with

  genrank  Reranker(engine=LMDeployEngine(pipeline=pipe)): rendered prompts grouped by query,
           exact label log-probabilities (see genrank/engines/lmdeploy.py for the configuration);
  card     the card's code: pipe(chats, GenerationConfig(temperature=1.0, logprobs=14,
           max_new_tokens=1, do_sample=True)).

Both use the same pipeline (TurboMind with prefix caching unless ``--backend pytorch``).

Run:  python benchmarks/bench_lmdeploy.py --model lightblue/lb-reranker-0.5B-v1.0 [--backend pytorch]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from bench_vllm import workload
from report import report


def best_rate(fn, workloads: list[list[tuple[str, str]]]) -> float:
    """Best pairs/s of ``fn`` over the workloads (each new to the prefix cache, which cannot be reset here)."""
    return max(len(pairs) / _seconds(fn, pairs) for pairs in workloads)


def _seconds(fn, pairs) -> float:
    start = time.perf_counter()
    fn(pairs)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", choices=["turbomind", "pytorch"], default="turbomind")
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--docs", type=int, default=32, help="documents per query")
    ap.add_argument("--doc-words", type=int, default=120)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import lmdeploy
    from lmdeploy import GenerationConfig, PytorchEngineConfig, TurbomindEngineConfig

    from genrank import Reranker, load_template
    from genrank.engines.lmdeploy import LMDeployEngine

    session_len = args.max_length + 8
    if args.backend == "pytorch":
        config = PytorchEngineConfig(session_len=session_len, enable_prefix_caching=args.prefix_caching,
                                     logprobs_mode="raw_logprobs")
    else:
        config = TurbomindEngineConfig(session_len=session_len, enable_prefix_caching=args.prefix_caching)
    pipe = lmdeploy.pipeline(args.model, backend_config=config)
    engine = LMDeployEngine(pipeline=pipe)
    rr = Reranker(engine=engine, max_length=args.max_length)
    pairs = workload(args.queries, args.docs, args.doc_words)
    tokens = sum(map(len, rr.builder.build([q for q, _ in pairs], [d for _, d in pairs]).token_ids))
    result = {"model": args.model, "lmdeploy": lmdeploy.__version__, "python": platform.python_version(),
              "backend": args.backend, "backend_config": repr(config), "genrank_gen_config": repr(engine.generation_config()),
              "pairs": len(pairs), "tokens": tokens, "queries": args.queries, "max_length": args.max_length,
              "repeats": args.repeats, "note": "each repeat scores new pairs of the same shape; tokens/s uses "
              "the mean prompt length of the first workload"}
    print(json.dumps(result, indent=2))

    per_pair = tokens / len(pairs)
    rr.score(pairs[: args.docs])  # warm-up
    rate = best_rate(rr.score, [workload(args.queries, args.docs, args.doc_words, seed=1 + r) for r in range(args.repeats)])
    result["genrank"] = {"pairs_per_s": rate, "tokens_per_s": rate * per_pair}

    template = load_template()
    card_config = GenerationConfig(temperature=1.0, logprobs=14, max_new_tokens=1, do_sample=True)
    rate = best_rate(lambda ps: pipe([template.messages(q, d, None) for q, d in ps], gen_config=card_config),
                     [workload(args.queries, args.docs, args.doc_words, seed=100 + r) for r in range(args.repeats)])
    result["card"] = {"pairs_per_s": rate, "tokens_per_s": rate * per_pair}
    report(result, args.out)


if __name__ == "__main__":
    main()

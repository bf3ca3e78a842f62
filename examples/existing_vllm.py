"""Plug genrank into a `vllm.LLM` you already built: your engine settings, one copy of the weights.

genrank renders the prompts (with truncation) and turns first-token label log-probabilities into
scores; the LLM object stays yours and can go on generating.

    pip install genrank[vllm]
    python examples/existing_vllm.py --model lightblue/lb-reranker-0.5B-v1.0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vllm import LLM

from genrank import Reranker
from genrank.engines.vllm import VLLMEngine

QUERY = "Who wrote 'To Kill a Mockingbird'?"
DOCUMENTS = Path(__file__).with_name("data") / "mockingbird.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lightblue/lb-reranker-0.5B-v1.0", help="model id or path")
    parser.add_argument("--max-model-len", type=int, default=2048, help="vLLM context length")
    parser.add_argument("--dtype", default="auto", help="vLLM dtype, e.g. bfloat16 or float32 (CPU)")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs or compilation: starts faster")
    args = parser.parse_args()

    llm = LLM(model=args.model, max_model_len=args.max_model_len, dtype=args.dtype, enforce_eager=args.enforce_eager)
    # prompts are cut to max_length tokens; leave room for the one generated token
    reranker = Reranker(engine=VLLMEngine(llm=llm), max_length=args.max_model_len - 1)

    documents = DOCUMENTS.read_text(encoding="utf-8").splitlines()
    print(f"Query: {QUERY}")
    for row in reranker.rank(QUERY, documents, top_k=3, return_documents=True):
        print(f"[{row['score']:.3f}] {row['text']}")


if __name__ == "__main__":
    main()

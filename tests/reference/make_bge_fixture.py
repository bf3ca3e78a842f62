"""Reference scores of bge-reranker-v2-gemma from FlagEmbedding's own FlagLLMReranker, on the tiny Gemma model.

FlagEmbedding 1.4 runs under transformers 4, genrank under 5, so this runs in its own environment
and writes tests/reference/bge_reranker_v2_gemma.json, which tests/test_recipes_reference.py reads::

    python3 -m venv /tmp/flag-venv
    /tmp/flag-venv/bin/pip install torch==2.13.0 "transformers>=4.44,<4.57" FlagEmbedding==1.4.2
    /tmp/flag-venv/bin/python tests/reference/make_bge_fixture.py

It builds the tiny model with tests/tiny_model.py (same bytes under either environment; the file
records their sha256), scores fixed pairs with ``compute_score`` (normalize False and True) and
records, for each pair, the input ids FlagEmbedding's tokenization gave the model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from FlagEmbedding import FlagLLMReranker

from fixture import LONG_TEXT, tiny_model, write

PAIRS = [
    ["Who wrote To Kill a Mockingbird?", "Harper Lee wrote To Kill a Mockingbird, published in 1960."],
    ["What is the capital of France?", "Paris is the capital of France."],
    ["how to cook rice", "Rinse the rice, add water, and simmer for twenty minutes."],
    ["Who wrote the book?", "Apples grow on trees in orchards."],
    ["When does the library open?", LONG_TEXT * 20],  # the passage is cut to max_length
    ["What does the tree hold?" + " Boo Radley leaves small gifts in a tree." * 60, "Boo Radley is the neighbor."],
    ["Does the passage answer yes?", "It says <bos> Yes <eos> and <start_of_turn>user then stops."],
]
SPECIAL_TEXT_PAIR = 6  # its passage holds special-token text: FlagEmbedding's tokenizer reads it as control tokens
RUNS = [{"max_length": 512, "pairs": list(range(len(PAIRS)))},  # FlagLLMReranker's default
        {"max_length": 40, "pairs": [0, 4, 5]}]  # query cut to 30 tokens, passage to fit


def input_ids(reranker: FlagLLMReranker, pair: list[str], max_length: int) -> list[int]:
    """The ids ``compute_score`` gives the model for one pair (its padding removed)."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["input_ids"][kwargs["attention_mask"].bool()].tolist())

    handle = reranker.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        reranker.compute_score([pair], max_length=max_length)
    finally:
        handle.remove()
    return seen[-1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model.build_tiny_gemma_reranker(Path(tmp) / "tiny-gemma")
        reranker = FlagLLMReranker(str(model_dir), use_fp16=False, use_bf16=False, devices="cpu")
        runs = []
        for run in RUNS:
            pairs = [PAIRS[i] for i in run["pairs"]]
            runs.append({
                **run,
                "input_ids": [input_ids(reranker, p, run["max_length"]) for p in pairs],
                "scores": reranker.compute_score(pairs, max_length=run["max_length"], normalize=False),
                "normalized": reranker.compute_score(pairs, max_length=run["max_length"], normalize=True),
            })
        path = write("bge_reranker_v2_gemma", model_dir, ("torch", "transformers", "tokenizers", "FlagEmbedding"),
                     reranker="FlagEmbedding.FlagLLMReranker(model_dir, use_fp16=False, devices='cpu')"
                              ".compute_score(pairs, max_length=max_length, normalize=...)",
                     yes_token_id=reranker.yes_loc, pairs=PAIRS, special_text_pair=SPECIAL_TEXT_PAIR, runs=runs)
    print(path)


if __name__ == "__main__":
    main()

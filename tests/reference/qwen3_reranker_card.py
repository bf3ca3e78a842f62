"""Qwen3-Reranker scored by its model card's transformers code.

Between the ``--- model card ---`` markers is the code of the "Transformers Usage" section of the
Qwen/Qwen3-Reranker-0.6B model card (Qwen team, Apache-2.0), verbatim. Only what the card runs at
module level — loading "Qwen/Qwen3-Reranker-0.6B", ``max_length = 8192`` and its example — is
moved into ``card_scores``, which loads a local model directory instead and may lower
``max_length`` so that a test pair is truncated.
"""

from __future__ import annotations

# --- model card ---------------------------------------------------------------------------------
# Requires transformers>=4.51.0
import torch
from transformers import AutoModel, AutoTokenizer, AutoModelForCausalLM  # noqa: F401


def format_instruction(instruction, query, doc):
    if instruction is None:
        instruction = 'Given a web search query, retrieve relevant passages that answer the query'
    output = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(instruction=instruction,query=query, doc=doc)
    return output

def process_inputs(pairs):
    inputs = tokenizer(
        pairs, padding=False, truncation='longest_first',
        return_attention_mask=False, max_length=max_length - len(prefix_tokens) - len(suffix_tokens)
    )
    for i, ele in enumerate(inputs['input_ids']):
        inputs['input_ids'][i] = prefix_tokens + ele + suffix_tokens
    inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    for key in inputs:
        inputs[key] = inputs[key].to(model.device)
    return inputs

@torch.no_grad()
def compute_logits(inputs, **kwargs):
    batch_scores = model(**inputs).logits[:, -1, :]
    true_vector = batch_scores[:, token_true_id]
    false_vector = batch_scores[:, token_false_id]
    batch_scores = torch.stack([false_vector, true_vector], dim=1)
    batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
    scores = batch_scores[:, 1].exp().tolist()
    return scores

prefix = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# --- end of model card --------------------------------------------------------------------------


def card_scores(model_path: str, triples: list[tuple[str | None, str, str]],
                max_length_: int = 8192) -> tuple[list[float], list[list[int]]]:
    """P(yes) for each (instruction or None, query, document), and the token ids the card sends the model.

    The card's module-level set-up, with ``model_path`` for "Qwen/Qwen3-Reranker-0.6B", float32 on CPU.
    """
    global tokenizer, model, token_false_id, token_true_id, max_length, prefix_tokens, suffix_tokens
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side='left')
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    max_length = max_length_
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)

    pairs = [format_instruction(instruction, query, doc) for instruction, query, doc in triples]
    inputs = process_inputs(pairs)
    scores = compute_logits(inputs)
    ids = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    return scores, ids

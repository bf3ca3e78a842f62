import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SEED_DOCUMENTS, SEED_QUERY
from transformers import AutoModelForCausalLM
from wrapped_engine import WrappedEngine

from genrank import LabelLogprobs, Reranker, ScoringError, ZeroLabelMassWarning, load_template


@pytest.fixture(scope="module")
def rr(hf_engine):
    return Reranker(engine=hf_engine)


def test_import_does_not_load_engines():
    code = "import sys, genrank; print(sorted(m for m in ('torch', 'vllm', 'lmdeploy', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_score_rerank_rank_shapes_and_order(rr):
    pairs = [(SEED_QUERY, d) for d in SEED_DOCUMENTS]
    scores = rr.score(pairs)
    assert scores.shape == (6,) and scores.dtype == np.float64
    assert np.all((scores >= 1) & (scores <= 7))
    assert np.allclose(rr.rerank(SEED_QUERY, SEED_DOCUMENTS), scores)
    assert np.allclose(rr.score(pairs[::-1]), scores[::-1])  # input order, not batch order
    ranked = rr.rank(SEED_QUERY, SEED_DOCUMENTS, top_k=3, return_documents=True)
    assert [r["corpus_id"] for r in ranked] == list(np.argsort(-scores)[:3])
    assert [r["score"] for r in ranked] == sorted(scores, reverse=True)[:3]
    assert all(r["text"] == SEED_DOCUMENTS[r["corpus_id"]] for r in ranked)
    assert set(rr.rank(SEED_QUERY, SEED_DOCUMENTS)[0]) == {"corpus_id", "score"}
    assert len(rr.rank(SEED_QUERY, SEED_DOCUMENTS, top_k=100)) == 6


def test_scores_vary_with_the_document(rr):
    scores = rr.rerank(SEED_QUERY, SEED_DOCUMENTS)
    assert scores.max() - scores.min() > 0.2


def test_details_report_label_mass_and_truncation(hf_engine):
    rr = Reranker(engine=hf_engine, max_length=200)
    d = rr.score_details([(SEED_QUERY, SEED_DOCUMENTS[0]), (SEED_QUERY, "long " * 1000)])
    assert d.truncated.tolist() == [False, True]
    assert np.all((d.label_mass > 0.3) & (d.label_mass < 1.0))
    assert d.errors == {} and d.zero_mass == 0


def test_chunking_gives_the_same_scores(hf_engine, rr):
    pairs = [(SEED_QUERY, d) for d in SEED_DOCUMENTS] * 3
    assert np.allclose(Reranker(engine=hf_engine, chunk_size=4).score(pairs), rr.score(pairs), atol=1e-9)


def test_fidelity_against_float64_full_vocab_softmax(tiny_model_dir, tiny_tokenizer, rr):
    """50 pairs: driver scores equal an independent float64 computation within 1e-4."""
    words = "apple novel court river Harper Lee Alabama justice movie whale ocean book prize".split()
    rng = np.random.default_rng(0)
    pairs = [(" ".join(rng.choice(words, 4)) + "?", " ".join(rng.choice(words, int(rng.integers(3, 60)))))
             for _ in range(50)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    template = load_template()
    label_ids = [tiny_tokenizer.convert_tokens_to_ids(str(i)) for i in range(1, 8)]
    expected = []
    for q, d in pairs:
        ids = tiny_tokenizer.apply_chat_template(template.messages(q, d), add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        p = torch.softmax(logits, -1)[label_ids].numpy()
        expected.append((p / p.sum()) @ np.arange(1, 8))
    assert np.max(np.abs(rr.score(pairs) - np.array(expected))) < 1e-4


def test_card_formula_option(hf_engine, rr):
    card = Reranker(engine=hf_engine, normalize=False)
    d = rr.score_details([(SEED_QUERY, SEED_DOCUMENTS[0])])
    assert card.score([(SEED_QUERY, SEED_DOCUMENTS[0])])[0] == pytest.approx(d.score[0] * d.label_mass[0])


@pytest.mark.parametrize("pairs, message", [
    ([("q", 5)], r"pairs\[0\] document must be a string, got int 5"),
    ([("q", "d"), (None, "d")], r"pairs\[1\] query must be a string, got NoneType"),
    ([("  ", "d")], r"pairs\[0\] query is empty"),
    (["just a string"], r"pairs\[0\] must be a \(query, document\) pair"),
    ([("q", "d", "x")], r"pairs\[0\] must be a \(query, document\) pair"),
])
def test_bad_pairs_are_named(rr, pairs, message):
    with pytest.raises(ValueError, match=message):
        rr.score(pairs)


def test_bad_rank_arguments(rr):
    with pytest.raises(ValueError, match="query is empty"):
        rr.rank("", ["d"])
    with pytest.raises(ValueError, match="documents must be a list of strings"):
        rr.rank("q", "one string")
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        rr.rank("q", ["d"], top_k=0)
    with pytest.raises(ValueError, match=r"documents\[1\] must be a string, got NoneType"):
        rr.rank("q", ["d", None])
    with pytest.raises(ValueError, match=r"pairs\[0\] document is not valid Unicode: lone surrogate '\\ud83d' at character 1"):
        rr.score([("q", "x\ud83d")])


def test_instructions_are_one_per_pair(hf_engine):
    rr = Reranker(engine=hf_engine, template="lb-reranker-v1-instruct")
    pairs = [(SEED_QUERY, d) for d in SEED_DOCUMENTS[:3]]
    for bad, message in [(["x"], "instructions has 1 items for 3 pairs"), ([], "instructions has 0 items for 3 pairs"),
                         ("x", "got a single string"), (["x", None, 5], r"instructions\[2\] must be a string")]:
        with pytest.raises(ValueError, match=message):
            rr.score_details(pairs, instructions=bad)
        with pytest.raises(ValueError, match=message):
            rr.prepare(pairs, instructions=bad)
    with pytest.raises(ValueError, match="takes no instruction"):
        Reranker(engine=hf_engine).score_details(pairs, instructions=["x", "y", "z"])
    given = rr.score_details(pairs, instructions=["Find the author.", None, "Find the author."]).score
    default = rr.score_details(pairs).score
    assert given[1] == pytest.approx(default[1], abs=1e-6) and given[0] != pytest.approx(default[0], abs=1e-6)


def test_unknown_engine_and_missing_extra():
    with pytest.raises(ValueError, match="unknown engine 'nope'.*hf, vllm, lmdeploy, openai"):
        Reranker("m", engine="nope")
    try:
        import lmdeploy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'genrank\[lmdeploy\]'"):
            Reranker("m", engine="lmdeploy")


def test_empty_candidate_lists_give_empty_results(rr):
    # RAG pipelines pass empty candidate lists: an empty answer, not an error
    assert rr.rank("q", []) == [] and rr.rank("q", [], top_k=3, return_documents=True) == []
    assert rr.rerank("q", []).shape == (0,) and rr.score([]).shape == (0,)
    d = rr.score_details([])
    assert len(d) == 0 and d.errors == {} and d.relevance.shape == (0,)


def test_auto_engine_says_what_it_chose_and_why(monkeypatch, caplog):
    import importlib.util

    from genrank.engines import auto_engine, engine_class
    from genrank.engines.hf import TransformersEngine

    has_vllm = importlib.util.find_spec("vllm") is not None
    with caplog.at_level("INFO", logger="genrank.engines"):
        assert engine_class("auto") is TransformersEngine  # no GPU here
    why = "no CUDA GPU is visible to torch" if has_vllm else "vLLM is not installed"
    assert f"engine='auto' chose 'hf': {why}" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_engine()[0] == ("vllm" if has_vllm else "hf")


@pytest.mark.parametrize("kind, option", [("gemma2", {"final_logit_softcapping": 2.0}),
                                          ("cohere", {"logit_scale": 0.25}),
                                          ("granite", {"logits_scaling": 4.0})])
def test_logit_scaling_and_softcapping_as_in_the_models_forward(tiny_tokenizer, kind, option):
    """Gemma 2 caps the LM head's logits, Cohere and Granite scale them: the driver finds out on a probe
    (no list of architectures) and scores through the model's whole forward."""
    from transformers import AutoConfig

    from genrank.engines.hf import TransformersEngine

    torch.manual_seed(0)
    config = AutoConfig.for_model(kind, vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                  initializer_range=0.3, **option)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    engine = TransformersEngine(model, tokenizer=tiny_tokenizer, device="cpu")
    assert engine.whole_forward
    rr = Reranker(engine=engine)
    prompts = rr.prepare([(SEED_QUERY, d) for d in SEED_DOCUMENTS])  # different lengths: padded batch
    label_ids = list(rr.builder.labels.token_ids)
    expected, head_only = [], []
    with torch.no_grad():
        for ids in prompts.token_ids:
            expected.append(torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)[label_ids].numpy())
            hidden = model.get_decoder()(torch.tensor([ids])).last_hidden_state[0, -1]
            head_only.append(torch.log_softmax(model.get_output_embeddings()(hidden), -1)[label_ids].numpy())
    got = engine.label_logprobs(prompts, rr.builder.labels).values
    assert np.abs(got - np.array(expected)).max() < 1e-5
    assert np.abs(np.array(head_only) - np.array(expected)).max() > 0.1  # the transform matters here


def test_models_whose_head_gives_their_logits_take_the_fast_path(hf_engine):
    assert not hf_engine.whole_forward


def test_a_forward_that_changes_the_logits_is_found_without_a_list_of_architectures(tiny_model_dir, rr):
    """Remote code may do anything after the head; a scaled Qwen2 is in no list of known transforms."""
    from transformers import Qwen2ForCausalLM

    from genrank.engines.hf import TransformersEngine

    class ScaledQwen2(Qwen2ForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 0.5
            return out

    model = ScaledQwen2.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    engine = TransformersEngine(model, tokenizer=rr.engine.tokenizer, device="cpu")
    assert engine.whole_forward
    prompts = rr.prepare([(SEED_QUERY, d) for d in SEED_DOCUMENTS])
    got = engine.label_logprobs(prompts, rr.builder.labels).values
    label_ids = list(rr.builder.labels.token_ids)
    with torch.no_grad():
        want = [torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)[label_ids].numpy()
                for ids in prompts.token_ids]
    assert np.abs(got - np.array(want)).max() < 1e-5
    assert np.abs(got - rr.engine.label_logprobs(prompts, rr.builder.labels).values).max() > 0.1


def test_dtype_names_and_loaded_model_options(tiny_model_dir, hf_engine):
    from genrank.engines.hf import TransformersEngine

    with pytest.raises(ValueError, match="dtype must be a torch dtype or its name such as 'bfloat16', got 'bf16'"):
        TransformersEngine(str(tiny_model_dir), device="cpu", dtype="bf16")
    assert TransformersEngine(str(tiny_model_dir), device="cpu", dtype="float64").model.dtype == torch.float64
    with pytest.raises(TypeError, match=r"only when loading a model by name; got \['dtype', 'revision'\] with a "
                                        "loaded Qwen2ForCausalLM"):
        TransformersEngine(hf_engine.model, tokenizer=hf_engine.tokenizer, device="cpu", dtype="bfloat16",
                           revision="main")


def test_instruction_needs_an_instruction_template(hf_engine):
    with pytest.raises(ValueError, match="takes no instruction"):
        Reranker(engine=hf_engine, instruction="Find proofs.")
    rr = Reranker(engine=hf_engine, template="lb-reranker-v1-instruct", instruction="Find the author.")
    other = Reranker(engine=hf_engine, template="lb-reranker-v1-instruct", instruction="Find a whale.")
    pairs = [(SEED_QUERY, d) for d in SEED_DOCUMENTS]
    assert not np.allclose(rr.score(pairs), other.score(pairs))


class FailingEngine(WrappedEngine):
    """An engine that cannot score the second prompt of every batch (like a remote pair that ran out of retries)."""

    def label_logprobs(self, prompts, labels):
        out = self.inner.label_logprobs(prompts, labels)
        return LabelLogprobs(out.values, {1: "HTTP 503 after 5 attempts"})


def test_engine_failures_are_recorded_not_dropped(hf_engine):
    rr = Reranker(engine=FailingEngine(hf_engine))
    pairs = [(SEED_QUERY, d) for d in SEED_DOCUMENTS[:3]]
    d = rr.score_details(pairs)
    assert d.errors == {1: "HTTP 503 after 5 attempts"}
    assert np.isnan(d.score[1]) and not np.isnan(d.score[[0, 2]]).any()
    with pytest.raises(ScoringError, match="1 of 3 pairs could not be scored.*pair 1: HTTP 503") as e:
        rr.score(pairs)
    assert e.value.result.errors == d.errors


def test_engine_options_with_an_instance_are_rejected(hf_engine):
    with pytest.raises(TypeError, match="engine options"):
        Reranker(engine=hf_engine, device="cpu")


def test_auto_engine_is_transformers_without_a_gpu(tiny_model_dir):
    rr = Reranker(str(tiny_model_dir), engine="auto")
    assert type(rr.engine).__name__ == "TransformersEngine"


def test_out_of_memory_halves_the_batch_and_keeps_results(tiny_model_dir, rr, monkeypatch):
    from genrank.engines.hf import TransformersEngine

    engine = TransformersEngine(str(tiny_model_dir), device="cpu", max_batch_size=8, share_prefix=False)
    real, sizes = engine._forward, []

    def forward(rows, lengths, label_ids, *raw):  # a device that only fits 2 rows at a time
        sizes.append(len(rows))
        if len(rows) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(rows, lengths, label_ids, *raw)

    monkeypatch.setattr(engine, "_forward", forward)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    pairs = [(SEED_QUERY, d) for d in SEED_DOCUMENTS]
    assert np.allclose(Reranker(engine=engine).score(pairs), rr.score(pairs), atol=1e-6)
    assert sizes[:3] == [6, 4, 2] and engine.max_batch_size == 2


def test_prepare_and_score_prompts_are_score_details_in_two_steps(rr):
    pairs = [(SEED_QUERY, d) for d in SEED_DOCUMENTS]
    prompts = rr.prepare(pairs)
    assert len(prompts) == 6 and all(len(ids) <= 1024 for ids in prompts.token_ids)
    assert np.array_equal(rr.score_prompts(prompts).score, rr.score_details(pairs).score)


def test_prefetch_keeps_order_and_raises_errors():
    from genrank.reranker import prefetch

    assert list(prefetch(lambda x: x * 10, range(5))) == [0, 10, 20, 30, 40]
    assert list(prefetch(lambda x: x, [])) == []

    def fail_on_3(x):
        if x == 3:
            raise ValueError("bad chunk 3")
        return x

    got = []
    with pytest.raises(ValueError, match="bad chunk 3"):
        for x in prefetch(fail_on_3, range(5)):
            got.append(x)
    assert got == [0, 1, 2]


def test_long_documents_in_chunks_find_a_relevant_passage_at_the_end(hf_engine):
    rr = Reranker(engine=hf_engine, max_length=128)
    words = "apple novel court river Harper Lee Alabama justice movie whale ocean book prize mockingbird".split()
    alone = rr.rerank(SEED_QUERY, [f"{w} " * 30 for w in words])
    low, high = words[int(np.argmin(alone))], words[int(np.argmax(alone))]
    doc = f"{low} " * 400 + f"{high} " * 60  # the passage that scores well comes last, far past max_length
    cut = rr.score_details([(SEED_QUERY, doc)])
    chunks = rr.score_details([(SEED_QUERY, doc)], long_documents="chunks")
    assert cut.truncated[0] and chunks.windows[0] >= 4 and not chunks.truncated[0]
    assert chunks.score[0] - cut.score[0] > 0.5 * (alone.max() - alone.min())
    prompts = rr.prepare([(SEED_QUERY, doc)], long_documents="chunks")
    assert "".join(prompts.documents) == doc and all(len(ids) <= 128 for ids in prompts.token_ids)
    windows = rr.score_prompts(prompts)
    best = Reranker(engine=hf_engine, max_length=128).score([(SEED_QUERY, d) for d in prompts.documents]).max()
    assert windows.score[0] == pytest.approx(best, abs=1e-5) and len(windows) == 1  # batches differ: float noise
    # the option on the Reranker, mixed with short documents, in input order
    rr_chunks = Reranker(engine=hf_engine, max_length=128, long_documents="chunks")
    mixed = rr_chunks.score_details([(SEED_QUERY, "short"), (SEED_QUERY, doc), (SEED_QUERY, SEED_DOCUMENTS[0])])
    assert mixed.windows.tolist()[::2] == [1, 1] and mixed.score[1] == pytest.approx(chunks.score[0], abs=1e-5)
    assert mixed.score[0] == pytest.approx(rr.score([(SEED_QUERY, "short")])[0], abs=1e-5)
    with pytest.raises(ValueError, match="long_documents must be one of"):
        Reranker(engine=hf_engine, long_documents="split")


class SilentOnEngine(WrappedEngine):
    """The tiny model, except that a prompt whose document holds "whale" puts no probability on any label."""

    def label_logprobs(self, prompts, labels):
        out = self.inner.label_logprobs(prompts, labels)
        out.values[["whale" in d for d in prompts.documents]] = -np.inf
        return out


def test_zero_label_mass_counts_pairs_not_windows(hf_engine):
    rr = Reranker(engine=SilentOnEngine(hf_engine), max_length=128, long_documents="chunks")
    silent, mixed = "whale " * 300, "whale " * 300 + "Harper Lee " * 40  # several windows each; only mixed's last speaks
    with pytest.warns(ZeroLabelMassWarning, match="^1 of 3 pairs put no probability on any label"):
        d = rr.score_details([(SEED_QUERY, silent), (SEED_QUERY, mixed), (SEED_QUERY, "short")])
    assert d.windows[0] >= 3 and d.windows[1] >= 3
    assert d.zero_mass == 1 and d.label_mass[0] == 0 and d.label_mass[1] > 0


def test_max_document_tokens_cuts_each_document_first(rr, tiny_tokenizer):
    doc = "Harper Lee wrote it. " * 50
    d = rr.score_details([(SEED_QUERY, doc), (SEED_QUERY, "short")], max_document_tokens=20)
    assert d.truncated.tolist() == [True, False]
    prompts = rr.prepare([(SEED_QUERY, doc)], max_document_tokens=20)
    assert len(tiny_tokenizer(prompts.documents[0], add_special_tokens=False)["input_ids"]) == 20
    assert doc.startswith(prompts.documents[0])
    with pytest.raises(ValueError, match="max_document_tokens must be a positive integer, got 0"):
        rr.score_details([(SEED_QUERY, doc)], max_document_tokens=0)


def test_relevance_is_the_score_on_zero_to_one(rr, hf_engine):
    d = rr.score_details([(SEED_QUERY, x) for x in SEED_DOCUMENTS])
    np.testing.assert_allclose(d.relevance, (d.score - 1) / 6, atol=1e-12)
    yes_no = Reranker(engine=hf_engine, template="qwen3-reranker").score_details([(SEED_QUERY, SEED_DOCUMENTS[0])])
    np.testing.assert_allclose(yes_no.relevance, yes_no.score, atol=1e-12)  # labels 0 and 1 already span [0, 1]


def test_close_is_final_and_closes_only_the_engine_the_reranker_made(tiny_model_dir, hf_engine, closed_engines):
    import asyncio
    import threading

    with Reranker(str(tiny_model_dir), engine="hf") as made:
        made.score([(SEED_QUERY, SEED_DOCUMENTS[0])])
    assert closed_engines == [made.engine]
    made.close()  # again: nothing more
    assert closed_engines == [made.engine]
    with pytest.raises(RuntimeError, match="this Reranker is closed"):
        made.score([(SEED_QUERY, SEED_DOCUMENTS[0])])

    given = Reranker(engine=hf_engine)
    before = set(threading.enumerate())
    asyncio.run(given.arank(SEED_QUERY, SEED_DOCUMENTS))  # starts the Reranker's engine thread
    started = [t for t in set(threading.enumerate()) - before if t.name.startswith("genrank-engine")]
    given.close()
    assert started and not any(t.is_alive() for t in started)
    assert closed_engines == [made.engine]  # the engine passed in stays open for its owner

    async def main():
        async with Reranker(str(tiny_model_dir), engine="hf") as rr:
            await rr.arank(SEED_QUERY, SEED_DOCUMENTS)
        with pytest.raises(RuntimeError, match="this Reranker is closed"):
            await rr.arank(SEED_QUERY, SEED_DOCUMENTS)
        return rr

    assert closed_engines == [made.engine, asyncio.run(main()).engine]


def test_an_engine_made_for_a_reranker_that_cannot_start_is_closed(tiny_model_dir, closed_engines):
    with pytest.raises(ValueError, match="max_length"):
        Reranker(str(tiny_model_dir), engine="hf", max_length=3)
    assert len(closed_engines) == 1

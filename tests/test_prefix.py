"""Shared-prefix prefill in the transformers driver: the same scores as whole prompts, on every
template and prompt shape, and batch files and the service reach it without changes of their own."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from conftest import SEED_DOCUMENTS, SEED_QUERY

from genrank import Reranker
from genrank.batch import score_file
from genrank.cli import main
from genrank.engines.hf import TransformersEngine
from genrank.engines.prefix import PrefixGroup, common_prefix, plan_waves

QUERIES = [SEED_QUERY, "Who wrote Moby-Dick, the novel about the whale?", "Jane Austen"]
LONG_DOCUMENT = " ".join(SEED_DOCUMENTS) * 2


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    """A driver of its own: tests change its batch budget."""
    return TransformersEngine(str(tiny_model_dir), device="cpu")


@pytest.fixture
def prefixes(engine, monkeypatch):
    """The prefixes the engine computes, call by call (a list of lists of their lengths)."""
    calls: list[list[int]] = []
    prefill = engine._prefill

    def counting(rows):
        calls.append([len(r) for r in rows])
        return prefill(rows)

    monkeypatch.setattr(engine, "_prefill", counting)
    return calls


def _both_ways(engine, prompts, labels):
    """(shared, unshared) label log-probabilities of ``prompts``."""
    shared = engine.label_logprobs(prompts, labels).values
    engine.share_prefix = False
    try:
        unshared = engine.label_logprobs(prompts, labels).values
    finally:
        engine.share_prefix = True
    return shared, unshared


def _pairs():
    """Three queries with 6, 4 and 1 documents (the last a group of one), interleaved."""
    pairs = [(QUERIES[0], d) for d in SEED_DOCUMENTS] + [(QUERIES[1], d) for d in SEED_DOCUMENTS[:4]]
    pairs.insert(3, (QUERIES[2], SEED_DOCUMENTS[3]))
    return pairs


@pytest.mark.parametrize("template", ["lb-reranker-v1", "lb-reranker-v1-instruct", "qwen3-reranker"])
def test_shared_prefixes_give_the_unshared_scores_on_every_template(engine, prefixes, template):
    instruction = "Find passages about authors" if template == "lb-reranker-v1-instruct" else None
    rr = Reranker(engine=engine, template=template, instruction=instruction)
    prompts = rr.prepare(_pairs(), [instruction] * 11 if instruction else None)
    shared, unshared = _both_ways(engine, prompts, rr.builder.labels)
    assert np.abs(shared - unshared).max() <= 1e-5
    assert len(prefixes) == 1 and len(prefixes[0]) == 2  # both groups' prefixes in one batch; the lone pair unshared
    assert min(prefixes[0]) >= engine.MIN_SHARED_PREFIX


def test_truncated_and_windowed_prompts(engine, prefixes):
    rr = Reranker(engine=engine, max_length=90)
    pairs = [(q, d) for q in QUERIES[:2] for d in [LONG_DOCUMENT, *SEED_DOCUMENTS[:3]]]
    truncated = rr.prepare(pairs)
    assert truncated.truncated.sum() >= 4
    shared, unshared = _both_ways(engine, truncated, rr.builder.labels)
    assert np.abs(shared - unshared).max() <= 1e-5
    windowed = rr.prepare(pairs, long_documents="chunks")
    assert windowed.pair_index is not None and len(windowed) > len(pairs)
    shared, unshared = _both_ways(engine, windowed, rr.builder.labels)
    assert np.abs(shared - unshared).max() <= 1e-5
    assert [len(call) for call in prefixes] == [2, 2]


def test_many_waves_and_batches_within_a_small_budget(engine, prefixes, monkeypatch):
    """Prefixes of different lengths in one batch, suffix batches that mix queries, several waves."""
    monkeypatch.setattr(engine, "max_batch_tokens", 400)
    rr = Reranker(engine=engine)
    queries = [f"{q} ({'more words ' * n})" for n in range(6) for q in QUERIES[:2]]
    prompts = rr.prepare([(q, d) for q in queries for d in SEED_DOCUMENTS[:3]])
    shared, unshared = _both_ways(engine, prompts, rr.builder.labels)
    assert np.abs(shared - unshared).max() <= 1e-5
    assert sum(map(len, prefixes)) == len(queries) and len(prefixes) > 1


def test_out_of_memory_halves_the_batches_and_scores_every_prompt(engine, prefixes, monkeypatch):
    monkeypatch.setattr(engine, "max_batch_tokens", 8192)
    monkeypatch.setattr(engine, "max_batch_size", 512)
    forward = engine._forward_suffixes

    def small_batches_only(prefix_kv, slots, prefix, suffixes, label_ids, raw=False):
        if len(suffixes) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return forward(prefix_kv, slots, prefix, suffixes, label_ids, raw)

    monkeypatch.setattr(engine, "_forward_suffixes", small_batches_only)
    rr = Reranker(engine=engine)
    prompts = rr.prepare(_pairs())
    shared = engine.label_logprobs(prompts, rr.builder.labels).values
    assert engine.max_batch_tokens < 8192 and engine.max_batch_size < 512
    monkeypatch.setattr(engine, "share_prefix", False)
    assert np.abs(shared - engine.label_logprobs(prompts, rr.builder.labels).values).max() <= 1e-5
    assert len(prefixes) > 1  # the wave was planned again after each halving


def test_the_off_switch_and_its_check(tiny_model_dir, engine, prefixes):
    off = TransformersEngine(str(tiny_model_dir), device="cpu", share_prefix=False)
    assert engine.share_prefix and not off.share_prefix
    rr = Reranker(engine=off)
    prompts = rr.prepare(_pairs())
    off._prefill = lambda rows: pytest.fail("share_prefix=False computed a prefix")
    assert np.abs(off.label_logprobs(prompts, rr.builder.labels).values
                  - engine.label_logprobs(prompts, rr.builder.labels).values).max() <= 1e-5
    with pytest.raises(ValueError, match="share_prefix must be true or false, got 'no'"):
        TransformersEngine(str(tiny_model_dir), device="cpu", share_prefix="no")


def test_the_cli_turns_it_off_with_an_engine_option(tiny_model_dir, tmp_path, monkeypatch, capsys):
    made = []
    init = TransformersEngine.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(TransformersEngine, "__init__", recording)
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(SEED_DOCUMENTS))
    for flag in ([], ["-E", "share_prefix=false"]):
        command = ["rank", SEED_QUERY, "--docs", str(docs), "-m", str(tiny_model_dir), "-e", "hf", "--json", *flag]
        assert main(command) == 0
    assert [e.share_prefix for e in made] == [True, False]


def test_models_scored_through_their_whole_forward_keep_the_unshared_way(tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("gemma2", vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                  initializer_range=0.3, final_logit_softcapping=2.0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    engine = TransformersEngine(model, tokenizer=tiny_tokenizer, device="cpu")
    assert engine.whole_forward and not engine.share_prefix
    rr = Reranker(engine=engine)
    prompts = rr.prepare(_pairs())
    label_ids = list(rr.builder.labels.token_ids)
    with torch.no_grad():
        want = [torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)[label_ids].numpy()
                for ids in prompts.token_ids]
    assert np.abs(engine.label_logprobs(prompts, rr.builder.labels).values - np.array(want)).max() < 1e-5


def test_a_model_with_sliding_window_layers_keeps_the_unshared_way(tiny_tokenizer, caplog):
    """Its cache keeps a window, not every position: the load-time probe finds out and says so."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                  use_sliding_window=True, sliding_window=8, max_window_layers=0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with caplog.at_level("INFO", logger="genrank.engines.hf"):
        engine = TransformersEngine(model, tokenizer=tiny_tokenizer, device="cpu")
    assert not engine.whole_forward and not engine.share_prefix
    assert "shared prefixes are off" in caplog.text


def test_batch_files_reach_the_shared_path(engine, prefixes, tmp_path):
    """score_file's chunks keep a query's documents together as they come: one prefix per query and chunk."""
    rows = [{"id": f"{q}-{n}", "query": QUERIES[q], "document": d}
            for q in range(2) for n, d in enumerate(SEED_DOCUMENTS)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    score_file(source, tmp_path / "scores.jsonl", Reranker(engine=engine), chunk_size=9)
    assert [len(call) for call in prefixes] == [2, 1]  # chunk 1: query 0 (6) and query 1 (3); chunk 2: query 1 (3)
    scores = [json.loads(line)["score"] for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    engine.share_prefix = False
    try:
        want = Reranker(engine=engine).score([(r["query"], r["document"]) for r in rows])
    finally:
        engine.share_prefix = True
    assert np.abs(np.array(scores) - want).max() <= 1e-5


def test_the_service_reaches_the_shared_path(engine, prefixes):
    """Each request is one query: its documents share one prefix, also when requests share an engine call."""
    pytest.importorskip("fastapi")
    import httpx

    from genrank.serve import ServeSettings, create_app

    app = create_app(Reranker(engine=engine), ServeSettings(batch_wait=0.2))

    async def run():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=120) as client:
                bodies = [{"model": "m", "query": q, "documents": SEED_DOCUMENTS} for q in QUERIES]
                answers = await asyncio.gather(*(client.post("/v2/rerank", json=b) for b in bodies))
                return [a.json() for a in answers]

    answers = asyncio.run(run())
    assert all(len(a["results"]) == len(SEED_DOCUMENTS) for a in answers)
    assert sum(map(len, prefixes)) == len(QUERIES) and len(prefixes) < len(QUERIES)  # batched across requests


def test_common_prefix_leaves_each_row_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # a prompt that is the others' prefix keeps its last token
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix([[1, 2], [2, 2]]) == 0


def test_waves_and_batches_count_the_broadcast_prefix():
    rng = np.random.default_rng(0)
    lengths = rng.integers(40, 300, size=200)
    groups = [PrefixGroup(np.arange(k, 200, 20), int(rng.integers(16, 35))) for k in range(20)]
    waves = plan_waves(groups, lengths, max_tokens=1000, max_rows=16)
    assert sorted(np.concatenate([b for w in waves for b in w.batches]).tolist()) == list(range(200))
    prefix = {int(r): g.prefix for g in groups for r in g.rows}
    for wave in waves:
        assert len(wave.groups) * max(g.prefix for g in wave.groups) <= 1000
        for batch in wave.batches:
            p = [prefix[int(r)] for r in batch]
            widest = max(p) + max(lengths[r] - prefix[int(r)] for r in batch)
            assert len(batch) <= 16 and (len(batch) == 1 or len(batch) * widest <= 1000)

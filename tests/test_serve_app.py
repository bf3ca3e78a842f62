"""The rerank app in-process (its lifespan run by hand, requests through httpx's ASGI transport): loading,
an engine call that raises, settings."""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc

import httpx
import numpy as np
import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY
from wrapped_engine import WrappedEngine

pytest.importorskip("fastapi")
from genrank import Reranker
from genrank.serve import ServeSettings, create_app


class PoisonEngine(WrappedEngine):
    """The transformers engine, except that a call holding a document with "[[poison]]" raises.

    A real engine fails a whole call on demand only this way (a remote engine's per-pair failures
    are tested against the fault-injecting server).
    """

    def __init__(self, engine):
        super().__init__(engine)
        self.calls: list[int] = []

    def label_logprobs(self, prompts, labels):
        self.calls.append(len(prompts))
        if any("[[poison]]" in d for d in prompts.documents):
            raise RuntimeError("poisoned batch")
        return self.inner.label_logprobs(prompts, labels)


async def _with_app(app, fn):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=120) as client:
            return await fn(client)


async def _ready(client: httpx.AsyncClient) -> None:
    for _ in range(3000):
        if (await client.get("/health")).status_code == 200:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not ready")


def test_503_while_the_model_loads_then_ready(hf_engine):
    release = threading.Event()

    def load() -> Reranker:
        assert release.wait(60)
        return Reranker(engine=hf_engine)

    async def run(client: httpx.AsyncClient):
        health = await client.get("/health")
        assert health.status_code == 503 and health.headers["Retry-After"]
        r = await client.post("/v2/rerank", json={"query": "q", "documents": ["a"]})
        assert r.status_code == 503 and r.json()["type"] == "not_ready"
        assert (await client.get("/v1/models")).status_code == 503
        release.set()
        await _ready(client)
        r = await client.post("/v2/rerank", json={"query": SEED_QUERY, "documents": SEED_DOCUMENTS})
        assert r.status_code == 200 and len(r.json()["results"]) == len(SEED_DOCUMENTS)

    asyncio.run(_with_app(create_app(load), run))


def test_an_engine_call_that_raises_fails_only_the_request_that_broke_it(hf_engine, caplog):
    engine = PoisonEngine(hf_engine)
    app = create_app(Reranker(engine=engine), ServeSettings(batch_wait=0.5))
    bodies = [{"query": f"{SEED_QUERY} {n}", "documents": SEED_DOCUMENTS} for n in range(3)]
    bodies[1]["documents"] = ["fine", "[[poison]] breaks the engine"]

    async def run(client: httpx.AsyncClient):
        await _ready(client)
        return await asyncio.gather(*(client.post("/v2/rerank", json=b) for b in bodies))

    good_first, bad, good_last = asyncio.run(_with_app(app, run))
    assert bad.status_code == 500 and "poisoned" not in bad.text  # the engine's own text stays in the server log
    request_id = bad.json()["request_id"]
    assert request_id in bad.json()["message"]
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert len(logged) == 1 and "RuntimeError: poisoned batch" in logged[0].getMessage() and logged[0].exc_info
    want = Reranker(engine=hf_engine)
    for body, r in ((bodies[0], good_first), (bodies[2], good_last)):
        assert r.status_code == 200
        scores = [x["relevance_score"] for x in sorted(r.json()["results"], key=lambda x: x["index"])]
        np.testing.assert_allclose(scores, want.score_details([(body["query"], d) for d in SEED_DOCUMENTS]).relevance,
                                   atol=1e-6)
    assert engine.calls[0] == 2 * len(SEED_DOCUMENTS) + 2  # all three were in one call before it was split


def test_windows_of_long_documents_count_against_the_queue_limit(hf_engine):
    engine = PoisonEngine(hf_engine)  # here only to count the engine calls
    reranker = Reranker(engine=engine, max_length=96, long_documents="chunks")
    app = create_app(reranker, ServeSettings(max_queue_pairs=20))
    long = " ".join(SEED_DOCUMENTS * 6)  # dozens of windows of 96 tokens

    async def run(client: httpx.AsyncClient):
        await _ready(client)
        refused = await client.post("/v2/rerank", json={"query": SEED_QUERY, "documents": ["short", long]})
        fits = await client.post("/v2/rerank", json={"query": SEED_QUERY, "documents": [SEED_DOCUMENTS[0] * 3]})
        return refused, fits

    refused, fits = asyncio.run(_with_app(app, run))
    assert refused.status_code == 413 and "--max-queue-pairs" in refused.json()["message"]
    assert fits.status_code == 200 and fits.json()["results"][0]["genrank"]["windows"] > 1
    assert len(engine.calls) == 1  # the refused request never reached the engine


def test_settings_are_checked_and_keys_never_shown():
    s = ServeSettings(api_keys=("sk-very-secret",))
    assert "sk-very-secret" not in repr(s)
    for bad in ({"max_documents": 0}, {"max_batch_pairs": -1}, {"request_timeout": 0}, {"api_keys": (" k",)},
                {"max_body_bytes": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            ServeSettings(**bad)


def test_the_service_closes_the_reranker_it_made_not_one_it_was_given(tiny_model_dir, hf_engine, closed_engines):
    made: list[Reranker] = []

    def load() -> Reranker:
        made.append(Reranker(str(tiny_model_dir), engine="hf"))
        return made[0]

    async def run(client: httpx.AsyncClient):
        await _ready(client)
        return (await client.post("/v2/rerank", json={"query": SEED_QUERY, "documents": SEED_DOCUMENTS})).status_code

    assert asyncio.run(_with_app(create_app(load), run)) == 200
    assert closed_engines == [made[0].engine]
    with pytest.raises(RuntimeError, match="closed"):
        made[0].score([(SEED_QUERY, "d")])
    given = Reranker(str(tiny_model_dir), engine="hf")
    assert asyncio.run(_with_app(create_app(given), run)) == 200
    assert closed_engines == [made[0].engine]
    assert given.score([(SEED_QUERY, "d")]).shape == (1,)  # still open for its owner


def test_an_unexpected_error_is_logged_with_a_request_id_not_returned(hf_engine, monkeypatch, caplog):
    reranker = Reranker(engine=hf_engine)
    monkeypatch.setattr(reranker, "prepare", lambda *a, **k: 1 / 0)  # a bug inside genrank

    async def run(client: httpx.AsyncClient):
        await _ready(client)
        return await client.post("/v2/rerank", json={"query": SEED_QUERY, "documents": ["a"]})

    r = asyncio.run(_with_app(create_app(reranker), run))
    assert r.status_code == 500 and "division" not in r.text and r.json()["type"] == "internal_error"
    logged = [rec for rec in caplog.records if r.json()["request_id"] in rec.getMessage()]
    assert len(logged) == 1 and "ZeroDivisionError" in logged[0].getMessage()


class SlowEngine(PoisonEngine):
    """The transformers engine, each call taking at least ``delay`` seconds; counts the prompts it gets."""

    def __init__(self, engine, delay: float):
        super().__init__(engine)
        self.delay = delay

    def label_logprobs(self, prompts, labels):
        time.sleep(self.delay)
        return super().label_logprobs(prompts, labels)


def test_a_timed_out_request_sends_no_more_prompts_to_the_engine(hf_engine):
    engine = SlowEngine(hf_engine, delay=1.0)
    app = create_app(Reranker(engine=engine), ServeSettings(max_batch_pairs=8, request_timeout=0.5))
    docs = [f"{d} ({n})" for n, d in enumerate(SEED_DOCUMENTS * 8)]  # 48 pairs: six engine calls of 8

    async def run(client: httpx.AsyncClient):
        await _ready(client)
        r = await client.post("/v2/rerank", json={"query": SEED_QUERY, "documents": docs})
        await asyncio.sleep(2.5)  # the call in progress ends; nothing new may start
        return r

    r = asyncio.run(_with_app(app, run))
    assert engine.calls == [8]  # the call in progress finished; the other 40 prompts never reached the engine
    assert r.status_code == 504 and "--request-timeout" in r.json()["message"]


def test_a_timed_out_request_stops_building_its_prompts(hf_engine):
    reranker = Reranker(engine=hf_engine)
    built: list[int] = []
    prepare = reranker.prepare

    def slow_prepare(pairs, *args, **options):
        built.append(len(pairs))
        time.sleep(0.2)
        return prepare(pairs, *args, **options)

    reranker.prepare = slow_prepare
    app = create_app(reranker, ServeSettings(request_timeout=0.5))

    async def run(client: httpx.AsyncClient):
        await _ready(client)
        r = await client.post("/v2/rerank", json={"query": SEED_QUERY, "documents": ["d"] * 1000})
        await asyncio.sleep(1.0)
        return r

    assert asyncio.run(_with_app(app, run)).status_code == 504
    assert sum(built) < 500  # building stopped at the deadline, a bounded piece at a time


def test_a_long_query_costs_little_per_document(hf_engine):
    """A 1 MB query with 200 documents: each prompt is the same cut query, built once (not per document)."""
    reranker = Reranker(engine=hf_engine, max_length=256)
    app = create_app(reranker, ServeSettings(request_timeout=120))
    body = {"query": "the quick brown fox " * 50000, "documents": ["short doc"] * 200}

    async def run(client: httpx.AsyncClient):
        await _ready(client)
        return await client.post("/v2/rerank", json=body)

    tracemalloc.start()
    start = time.perf_counter()
    try:
        r = asyncio.run(_with_app(app, run))
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 200 and len(r.json()["results"]) == 200
    assert all(x["genrank"]["truncated"] for x in r.json()["results"])
    assert seconds < 10 and peak < 500 * 2**20, (seconds, peak / 2**20)


def test_head_health_and_errors_with_fastapi_detail(hf_engine):
    app = create_app(Reranker(engine=hf_engine))

    async def run(client: httpx.AsyncClient):
        await _ready(client)
        head, get = await client.head("/health"), await client.get("/health")
        bad = await client.post("/v2/rerank", json={"query": " ", "documents": ["a"]})
        return head, get, bad

    head, get, bad = asyncio.run(_with_app(app, run))
    assert head.status_code == get.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"] == "application/json"
    assert bad.status_code == 422 and bad.json()["detail"] == bad.json()["message"] == "query is empty"

"""`genrank serve --engine openai` end to end: in front of the fault-injecting test server and of a real
vLLM OpenAI server, driven by the cohere SDK."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY
from openai_test_server import FakeOpenAIServer
from test_serve import ServeProcess, metric

from genrank import Reranker

pytest.importorskip("fastapi")
cohere = pytest.importorskip("cohere")

CLIENT_KEY, UPSTREAM_KEY = "client-key", "upstream-key"
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer(slow_seconds=5.0) as server:
        yield server


@pytest.fixture(scope="module")
def remote(fake, tmp_path_factory):
    """genrank serve in front of the fake server: its own client key, the upstream key from GENRANK_API_KEY."""
    proc = ServeProcess(["--engine", "openai", "--base-url", fake.url, "--model", "test-model", "--api-key", CLIENT_KEY,
                         "--request-timeout", "2", "-E", "max_retries=1"],
                        tmp_path_factory.mktemp("serve") / "remote.log", env={"GENRANK_API_KEY": UPSTREAM_KEY})
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def offline(fake):
    return Reranker("test-model", engine="openai", base_url=fake.url, api_key=UPSTREAM_KEY, max_retries=1)


def test_cohere_sdk_through_the_openai_engine(remote, fake, offline):
    want = offline.score_details([(SEED_QUERY, d) for d in SEED_DOCUMENTS]).relevance
    got = cohere.ClientV2(api_key=CLIENT_KEY, base_url=remote.url).rerank(  # no tokenizer: max_tokens_per_doc ignored
        model="test-model", query=SEED_QUERY, documents=SEED_DOCUMENTS, max_tokens_per_doc=4096)
    assert [r.index for r in got.results] == np.argsort(-want, kind="stable").tolist()
    np.testing.assert_allclose([r.relevance_score for r in sorted(got.results, key=lambda r: r.index)], want,
                               atol=1e-6)
    auth = {r["headers"].get("Authorization") for r in fake.requests}
    assert auth == {f"Bearer {UPSTREAM_KEY}"}  # the upstream key goes upstream; the client's never does


def test_the_upstream_key_is_not_a_client_key(remote):
    r = httpx.post(f"{remote.url}/v2/rerank", json={"query": "q", "documents": ["a"]},
                   headers={"Authorization": f"Bearer {UPSTREAM_KEY}"})
    assert r.status_code == 401 and UPSTREAM_KEY not in r.text


def test_a_pair_the_engine_cannot_score_fails_its_request_with_502_only(remote, offline):
    failing = {"query": SEED_QUERY, "documents": [SEED_DOCUMENTS[0], "[[fault:500:inf]] broken upstream"]}
    good = [{"query": f"{SEED_QUERY} {n}", "documents": SEED_DOCUMENTS} for n in range(4)]
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(httpx.post, f"{remote.url}/v2/rerank", json=b, headers=AUTH, timeout=30)
                   for b in [failing, *good]]
        bad, *fine = [f.result() for f in futures]
    assert bad.status_code == 502 and bad.json()["field"] == "documents[1]"
    assert "HTTP 500" in bad.json()["message"] and UPSTREAM_KEY not in bad.text
    for body, r in zip(good, fine):
        assert r.status_code == 200
        want = offline.score_details([(body["query"], d) for d in SEED_DOCUMENTS]).relevance
        np.testing.assert_allclose([x["relevance_score"] for x in sorted(r.json()["results"],
                                                                         key=lambda x: x["index"])], want, atol=1e-6)


def test_transient_upstream_faults_are_retried(remote, offline):
    docs = ["[[fault:429:1]] rate limited once", "[[fault:drop:1]] dropped once", SEED_DOCUMENTS[2]]
    r = httpx.post(f"{remote.url}/rerank", json={"query": SEED_QUERY, "texts": docs}, headers=AUTH, timeout=30)
    assert r.status_code == 200
    want = offline.score_details([(SEED_QUERY, d) for d in docs]).relevance
    np.testing.assert_allclose([x["score"] for x in sorted(r.json(), key=lambda x: x["index"])], want, atol=1e-6)


def test_a_slow_upstream_is_504_after_the_request_timeout_and_the_server_goes_on(remote):
    r = httpx.post(f"{remote.url}/v2/rerank", headers=AUTH, timeout=30,
                   json={"query": SEED_QUERY, "documents": ["[[fault:slow:inf]] stuck", "fine"]})
    assert r.status_code == 504 and "--request-timeout" in r.json()["message"]
    assert metric(remote.url, "genrank_pending_pairs", AUTH) == 0
    ok = httpx.post(f"{remote.url}/v2/rerank", headers=AUTH, json={"query": SEED_QUERY, "documents": ["fine"]})
    assert ok.status_code == 200


def test_in_front_of_a_real_vllm_server(vllm_url, tiny_model_dir, tmp_path):
    proc = ServeProcess(["--engine", "openai", "--base-url", vllm_url, "--model", str(tiny_model_dir)],
                        tmp_path / "vllm-front.log")
    try:
        proc.wait_ready()
        got = cohere.ClientV2(api_key="unused", base_url=proc.url).rerank(
            model=str(tiny_model_dir), query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=4)
    finally:
        assert proc.stop() == 0
    want = Reranker(str(tiny_model_dir), engine="openai", base_url=vllm_url).score_details(
        [(SEED_QUERY, d) for d in SEED_DOCUMENTS]).relevance
    order = np.argsort(-want, kind="stable")[:4]
    assert [r.index for r in got.results] == order.tolist()
    np.testing.assert_allclose([r.relevance_score for r in got.results], want[order], atol=1e-6)

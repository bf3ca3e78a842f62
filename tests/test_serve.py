"""`genrank serve` end to end: real server processes (tiny model, transformers engine) driven by the cohere
SDK, plain HTTP in the TEI, Jina, Open WebUI and Dify shapes, and Haystack's own CohereRanker."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from prometheus_client.parser import text_string_to_metric_families

from genrank import Reranker

KEY, ENV_KEY = "client-key-1", "client-key-2"
MAX_LENGTH = 256


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """A ``genrank serve`` subprocess on a free 127.0.0.1 port, its output in a log file."""

    def __init__(self, args: list[str], logfile: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logfile = logfile
        with open(logfile, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "genrank.cli", "serve", "--port", str(self.port), *args],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})

    def wait_ready(self, timeout: float = 300) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"genrank serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"genrank serve was not ready in {timeout} s:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")


def metric(url: str, name: str, headers: dict | None = None, **labels: str) -> float:
    """The sum of the samples of ``name`` (with these labels) in the server's /metrics."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """Keys from --api-key and GENRANK_SERVE_API_KEY, long documents in chunks, a 1 MiB body limit, 2 s to send it."""
    proc = ServeProcess(["--model", str(tiny_model_dir), "--engine", "hf", "--api-key", KEY,
                         "--max-length", str(MAX_LENGTH), "--long-documents", "chunks", "--max-body-mb", "1",
                         "--body-timeout", "2"],
                        tmp_path_factory.mktemp("serve") / "server.log", env={"GENRANK_SERVE_API_KEY": f" {ENV_KEY} ,"})
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def offline(hf_engine):
    """The same scoring in-process: what every server answer must equal."""
    return Reranker(engine=hf_engine, max_length=MAX_LENGTH, long_documents="chunks")


def expected(offline: Reranker, query: str, docs: list[str]):
    return offline.score_details([(query, d) for d in docs])


# -- clients -----------------------------------------------------------------------------------


def test_health_is_open_and_models_lists_the_model(server, tiny_model_dir):
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "model": str(tiny_model_dir)}
    models = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == [str(tiny_model_dir)]


def test_cohere_sdk_v2_and_v1(server, offline):
    import cohere

    want = expected(offline, SEED_QUERY, SEED_DOCUMENTS)
    order = np.argsort(-want.relevance, kind="stable")
    client = cohere.ClientV2(api_key=KEY, base_url=server.url)
    got = client.rerank(model="lb-reranker", query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=3)
    assert [r.index for r in got.results] == order[:3].tolist()
    np.testing.assert_allclose([r.relevance_score for r in got.results], want.relevance[order[:3]], atol=1e-6)
    assert all(0 <= r.relevance_score <= 1 for r in got.results)
    assert got.id and got.meta.api_version.version == "2" and got.meta.tokens.input_tokens > 0

    v1 = cohere.Client(api_key=ENV_KEY, base_url=server.url)  # the key from GENRANK_SERVE_API_KEY
    docs = [{"text": d, "source": f"doc-{n}"} for n, d in enumerate(SEED_DOCUMENTS)]
    got = v1.rerank(model="lb-reranker", query=SEED_QUERY, documents=docs, return_documents=True)
    assert [r.index for r in got.results] == order.tolist()
    assert [r.document.text for r in got.results] == [SEED_DOCUMENTS[i] for i in order]
    assert got.results[0].document.source == f"doc-{order[0]}"  # object fields come back with the document
    np.testing.assert_allclose([r.relevance_score for r in got.results], want.relevance[order], atol=1e-6)


def test_tei_shape_over_plain_http(server, offline):
    want = expected(offline, SEED_QUERY, SEED_DOCUMENTS)
    order = np.argsort(-want.relevance, kind="stable")
    body = {"query": SEED_QUERY, "texts": SEED_DOCUMENTS, "return_text": True}
    got = httpx.post(f"{server.url}/rerank", json=body, headers=AUTH).json()
    assert isinstance(got, list) and [r["index"] for r in got] == order.tolist()
    np.testing.assert_allclose([r["score"] for r in got], want.relevance[order], atol=1e-6)
    assert [r["text"] for r in got] == [SEED_DOCUMENTS[i] for i in order]

    raw = httpx.post(f"{server.url}/rerank", json={**body, "raw_scores": True, "return_text": False},
                     headers=AUTH).json()
    np.testing.assert_allclose([r["score"] for r in raw], want.score[order], atol=1e-6)  # expected label, 1-7
    np.testing.assert_allclose([r["label_mass"] for r in raw], want.label_mass[order], atol=1e-6)
    assert "text" not in raw[0]


def test_open_webui_and_dify_requests(server, offline):
    """The requests Open WebUI's ExternalReranker and Dify's OpenAI-compatible rerank plugin send."""
    want = expected(offline, SEED_QUERY, SEED_DOCUMENTS).relevance
    # Open WebUI: POST <url>/v1/rerank {model, query, documents, top_n}; scores read back by index
    r = httpx.post(f"{server.url}/v1/rerank", headers={"Content-Type": "application/json", **AUTH},
                   json={"model": "reranker", "query": SEED_QUERY, "documents": SEED_DOCUMENTS,
                         "top_n": len(SEED_DOCUMENTS)})
    scores = [x["relevance_score"] for x in sorted(r.json()["results"], key=lambda x: x["index"])]
    np.testing.assert_allclose(scores, want, atol=1e-6)
    # Dify: POST <endpoint_url>/rerank, endpoint_url with or without /v1, Jina shape, top_n
    for endpoint in (server.url, f"{server.url}/v1"):
        r = httpx.post(f"{endpoint}/rerank", headers={"Content-Type": "application/json", **AUTH},
                       json={"model": "m", "query": SEED_QUERY, "documents": SEED_DOCUMENTS, "top_n": 2}, timeout=60)
        results = r.json()["results"]
        assert r.status_code == 200 and len(results) == 2
        assert results[0]["relevance_score"] == pytest.approx(want.max(), abs=1e-6)


def test_haystack_cohere_ranker_pointed_at_the_server(server, offline):
    """Haystack's own Cohere ranker (cohere-haystack), unchanged but for its base URL and key."""
    CohereRanker = pytest.importorskip("haystack_integrations.components.rankers.cohere").CohereRanker
    from haystack import Document
    from haystack.utils import Secret

    ranker = CohereRanker(model="lb-reranker", api_key=Secret.from_token(KEY), api_base_url=server.url, top_k=3)
    docs = [Document(content=d) for d in SEED_DOCUMENTS]
    got = ranker.run(query=SEED_QUERY, documents=docs)["documents"]
    want = expected(offline, SEED_QUERY, SEED_DOCUMENTS).relevance
    order = np.argsort(-want, kind="stable")[:3]
    assert [d.content for d in got] == [SEED_DOCUMENTS[i] for i in order]
    np.testing.assert_allclose([d.score for d in got], want[order], atol=1e-6)


# -- batching ----------------------------------------------------------------------------------


def test_concurrent_clients_get_their_own_scores_batched_across_requests(server, offline):
    rng = random.Random(7)
    words = " ".join(SEED_DOCUMENTS).split()
    pool = [" ".join(rng.sample(words, rng.randint(4, 14))) for _ in range(200)]
    queries = [f"{SEED_QUERY} ({n})" if n % 2 else f"who wrote book {n}" for n in range(24)]
    requests = [(q, rng.sample(pool, rng.randint(10, 30))) for q in queries]
    before_calls = metric(server.url, "genrank_batch_requests_count", AUTH)
    before_single = metric(server.url, "genrank_batch_requests_bucket", AUTH, le="1.0")

    async def client(query: str, docs: list[str]) -> dict:
        async with httpx.AsyncClient(timeout=120) as c:
            r = await c.post(f"{server.url}/v2/rerank", headers=AUTH,
                             json={"model": "m", "query": query, "documents": docs, "return_documents": True})
            assert r.status_code == 200, r.text
            return r.json()

    async def all_clients():
        return await asyncio.gather(*(client(q, d) for q, d in requests))

    answers = asyncio.run(all_clients())
    want = offline.score_details([(q, d) for q, docs in requests for d in docs]).relevance
    start = 0
    for (query, docs), answer in zip(requests, answers):
        mine = want[start:start + len(docs)]
        start += len(docs)
        assert sorted(r["index"] for r in answer["results"]) == list(range(len(docs)))  # nothing lost or doubled
        for r in answer["results"]:
            assert r["document"]["text"] == docs[r["index"]]  # nothing crossed between requests
            assert r["relevance_score"] == pytest.approx(mine[r["index"]], abs=1e-6)
    calls = metric(server.url, "genrank_batch_requests_count", AUTH) - before_calls
    single = metric(server.url, "genrank_batch_requests_bucket", AUTH, le="1.0") - before_single
    assert calls - single > 0, "no engine call took pairs of more than one request"
    assert calls < len(requests)


def test_disconnected_client_has_its_queued_pairs_dropped(server):
    """While the engine runs one request, another is queued and its client hangs up: its pairs never run."""
    sent_before = metric(server.url, "genrank_batch_prompts_sum", AUTH)
    big = [f"{d} ({n})" for n, d in enumerate(SEED_DOCUMENTS * 40)]  # 240 pairs: one engine call of a while
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{server.url}/v2/rerank", headers=AUTH, timeout=120,
                            json={"model": "m", "query": SEED_QUERY, "documents": big})
        _wait_for(lambda: metric(server.url, "genrank_pending_pairs", AUTH) == len(big)
                  and metric(server.url, "genrank_queue_prompts", AUTH) == 0)  # in the engine
        body = json.dumps({"model": "m", "query": "q", "documents": ["gone"] * 37}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            _wait_for(lambda: metric(server.url, "genrank_queue_prompts", AUTH) == 37)
        assert first.result().status_code == 200
    _wait_for(lambda: metric(server.url, "genrank_pending_pairs", AUTH) == 0)
    assert metric(server.url, "genrank_batch_prompts_sum", AUTH) - sent_before == len(big)
    _wait_for(lambda: '"POST /v2/rerank" 499 pairs=37' in server.log())


def _upload_start(port: int, body: bytes, sent: int) -> socket.socket:
    """A connection that has sent the headers of a POST /v2/rerank of ``body`` and its first ``sent`` bytes."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:sent])
    return s


def _read_to_close(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (headers and body may come apart)."""
    s.settimeout(30)
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    return reply


def test_stalled_upload_is_408_and_a_client_gone_mid_body_is_499(server):
    body = json.dumps({"query": "q", "documents": ["d"] * 100}).encode()
    gone_before = metric(server.url, "genrank_requests_total", AUTH, status="499")
    with _upload_start(server.port, body, 50) as s:  # then nothing more: --body-timeout 2 ends it
        reply = _read_to_close(s)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"--body-timeout" in reply
    for _ in range(3):
        with _upload_start(server.port, body, 50):
            time.sleep(0.2)  # the server is reading the body when the client hangs up
    _wait_for(lambda: metric(server.url, "genrank_requests_total", AUTH, status="499") - gone_before == 3)
    assert metric(server.url, "genrank_requests_total", AUTH, status="500") == 0
    assert "Traceback" not in server.log() and '"POST /v2/rerank" 499 pairs=- ' in server.log()


def _wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# -- long documents ----------------------------------------------------------------------------


def test_long_document_relevant_passage_at_the_end_is_found_in_chunks(server, offline):
    """A document longer than --max-length whose best passage is at its end, against one without it.

    Truncated, both are cut to the same first window and score the same; in chunks (the
    server's --long-documents) the passage at the end is scored and ranks its document first.
    """
    alone = expected(offline, SEED_QUERY, SEED_DOCUMENTS).relevance
    best, worst = SEED_DOCUMENTS[int(np.argmax(alone))], SEED_DOCUMENTS[int(np.argmin(alone))]
    filler = " ".join([worst] * 6)  # several times MAX_LENGTH tokens
    docs = [filler + " " + worst, filler + " " + best]
    body = {"model": "m", "query": SEED_QUERY, "documents": docs}
    got = httpx.post(f"{server.url}/v2/rerank", json=body, headers=AUTH, timeout=60).json()["results"]
    assert got[0]["index"] == 1 and got[0]["genrank"]["windows"] > 1
    want = expected(offline, SEED_QUERY, docs)
    assert want.windows.tolist() == [r["genrank"]["windows"] for r in sorted(got, key=lambda r: r["index"])]
    np.testing.assert_allclose([r["relevance_score"] for r in sorted(got, key=lambda r: r["index"])],
                               want.relevance, atol=1e-6)

    cut = httpx.post(f"{server.url}/rerank", json={"query": SEED_QUERY, "texts": docs, "truncate": True},
                     headers=AUTH).json()
    # cut to the same first window: the passage is never seen (equal up to batch rounding)
    assert cut[0]["score"] == pytest.approx(cut[1]["score"], abs=1e-6)
    assert got[0]["relevance_score"] > cut[0]["score"]
    whole = httpx.post(f"{server.url}/rerank", json={"query": SEED_QUERY, "texts": docs, "truncate": False},
                       headers=AUTH).json()  # nothing cut: in chunks the texts are windowed
    assert whole[0]["index"] == 1 and whole[0]["score"] == pytest.approx(got[0]["relevance_score"], abs=1e-6)


def test_max_tokens_per_doc_cuts_documents_first(server, offline, hf_engine):
    body = {"model": "m", "query": SEED_QUERY, "documents": SEED_DOCUMENTS, "max_tokens_per_doc": 8}
    got = httpx.post(f"{server.url}/v2/rerank", json=body, headers=AUTH).json()["results"]
    want = offline.score_details([(SEED_QUERY, d) for d in SEED_DOCUMENTS], max_document_tokens=8)
    np.testing.assert_allclose([r["relevance_score"] for r in sorted(got, key=lambda r: r["index"])],
                               want.relevance, atol=1e-6)
    assert all(r["genrank"]["truncated"] for r in got)


# -- bad input, limits, auth -------------------------------------------------------------------

BAD = [
    ("/v2/rerank", '{"query": "q", "documents": ["a"', 400, None),
    ("/v2/rerank", "[1, 2]", 400, None),
    ("/v2/rerank", '{"documents": ["a"]}', 422, "query"),
    ("/v2/rerank", '{"query": "  ", "documents": ["a"]}', 422, "query"),
    ("/v2/rerank", '{"query": 7, "documents": ["a"]}', 422, "query"),
    ("/v2/rerank", '{"query": "q", "documents": "abc"}', 422, "documents"),
    ("/v2/rerank", '{"query": "q", "documents": ["a", null]}', 422, "documents[1]"),
    ("/v2/rerank", '{"query": "q", "documents": ["a", {"text": "b"}]}', 422, "documents[1]"),
    ("/v2/rerank", '{"query": "q", "documents": ["ok", "\\ud83d"]}', 422, "documents[1]"),
    ("/v2/rerank", '{"query": "q", "documents": ["a"], "top_n": -1}', 422, "top_n"),
    ("/v2/rerank", '{"query": "q", "documents": ["a"], "top_n": "3"}', 422, "top_n"),
    ("/v2/rerank", '{"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}', 422, "max_tokens_per_doc"),
    ("/v1/rerank", '{"query": "q", "documents": [{"title": "no text"}]}', 422, "documents[0]"),
    ("/v1/rerank", '{"query": "q", "documents": [{"text": 5}]}', 422, "documents[0]"),
    ("/rerank", '{"query": "q", "texts": ["a", 1]}', 422, "texts[1]"),
    ("/rerank", '{"query": "q", "texts": ["a"], "truncation_direction": "left"}', 422, "truncation_direction"),
    ("/rerank", '{"query": "q", "texts": ["a"], "raw_scores": "yes"}', 422, "raw_scores"),
    ("/rerank", '{"query": "", "documents": ["a"]}', 422, "query"),
    ("/rerank", '"just a string"', 400, None),
    ("/v2/rerank", b'{"query": "q", "documents": ["\xff\xfe"]}', 400, None),  # not UTF-8
    ("/v2/rerank", "[" * 100_000 + "]" * 100_000, 400, None),  # nested past the JSON parser's depth
]


@pytest.mark.parametrize(("path", "raw", "status", "field"), BAD)
def test_bad_input_is_a_4xx_naming_the_field(server, path, raw, status, field):
    body = raw if isinstance(raw, bytes) else raw.encode()
    r = httpx.post(f"{server.url}{path}", content=body, headers={"Content-Type": "application/json", **AUTH})
    assert r.status_code == status, r.text
    assert r.json()["message"]
    if field is not None:
        assert r.json()["field"] == field and r.json()["message"].startswith(field)


def test_limits_and_empty_input(server):
    def post(path: str, headers: dict | None = None, **kw) -> httpx.Response:
        return httpx.post(f"{server.url}{path}", headers=headers or AUTH, timeout=60, **kw)

    r = post("/v2/rerank", json={"query": "q", "documents": []})
    assert r.status_code == 200 and r.json()["results"] == []
    assert post("/rerank", json={"query": "q", "texts": []}).json() == []
    r = post("/v2/rerank", json={"query": "q", "documents": ["d"] * 1001})
    assert r.status_code == 413 and "1001" in r.json()["message"] and r.json()["field"] == "documents"
    big = {"query": "q", "documents": ["x" * 1000] * 1100}  # over --max-body-mb 1
    r = post("/v2/rerank", content=json.dumps(big).encode(), headers={"Content-Type": "application/json", **AUTH})
    assert r.status_code == 413 and "--max-body-mb" in r.json()["message"]
    assert post("/v2/rerank", content=b'{"query": "q", "documents": ["a"]}').status_code == 400  # not sent as JSON
    assert httpx.get(f"{server.url}/v2/rerank", headers=AUTH).status_code == 405
    assert httpx.get(f"{server.url}/nowhere", headers=AUTH).status_code == 404
    # none of that hurt the server
    assert post("/v2/rerank", json={"query": "q", "documents": ["a", "b"]}).status_code == 200
    assert metric(server.url, "genrank_requests_total", AUTH, status="500") == 0


def test_wrong_or_missing_key_is_401_and_never_echoed(server):
    body = {"query": "q", "documents": ["a"]}
    for headers in ({}, {"Authorization": "Bearer not-the-key"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEY}x"}):
        r = httpx.post(f"{server.url}/v2/rerank", json=body, headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert "not-the-key" not in r.text and KEY not in r.text
    for path in ("/metrics", "/v1/models", "/docs", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 401
        assert httpx.get(f"{server.url}{path}", headers=AUTH).status_code == 200
    assert httpx.post(f"{server.url}/v2/rerank", json=body,
                      headers={"Authorization": f"bearer {ENV_KEY}"}).status_code == 200


def test_metrics_in_prometheus_format(server):
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("genrank_requests", "genrank_request_duration_seconds", "genrank_pairs", "genrank_batch_prompts",
                 "genrank_batch_requests", "genrank_queue_prompts", "genrank_pending_pairs"):
        assert name in families, name
    statuses = {(s.labels["endpoint"], s.labels["status"]) for s in families["genrank_requests"].samples
                if s.name == "genrank_requests_total"}
    assert ("/v2/rerank", "200") in statuses and ("/health", "200") in statuses


def test_access_log_has_status_pairs_latency_and_no_text_or_keys(server):
    httpx.post(f"{server.url}/v2/rerank", headers=AUTH, json={"query": "secret query text",
                                                              "documents": ["private document text", "b"]})
    _wait_for(lambda: '"POST /v2/rerank" 200 pairs=2 ' in server.log())
    log = server.log()
    assert "secret query text" not in log and "private document text" not in log
    assert SEED_DOCUMENTS[0][:40] not in log
    assert KEY not in log and ENV_KEY not in log


# -- a second server: no batching, a small queue, SIGTERM --------------------------------------


@pytest.fixture(scope="module")
def unbatched(tiny_model_dir, tmp_path_factory):
    proc = ServeProcess(["--model", str(tiny_model_dir), "--engine", "hf", "--max-batch-pairs", "0",
                         "--max-queue-pairs", "300"], tmp_path_factory.mktemp("serve") / "unbatched.log")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def test_full_queue_is_429_with_retry_after(unbatched):
    docs = [f"{d} ({n})" for n, d in enumerate(SEED_DOCUMENTS * 42)][:250]
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{unbatched.url}/v2/rerank", timeout=120,
                            json={"query": SEED_QUERY, "documents": docs})
        _wait_for(lambda: metric(unbatched.url, "genrank_pending_pairs") >= 250)
        r = httpx.post(f"{unbatched.url}/v2/rerank", json={"query": "q", "documents": ["d"] * 100})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "--max-queue-pairs" in r.text
        # Dify sends an empty Authorization header when it has no key: fine on a server without keys
        small = httpx.post(f"{unbatched.url}/rerank", json={"query": "q", "documents": ["d"] * 40},
                           headers={"Authorization": ""}, timeout=120)
        assert small.status_code == 200 and len(small.json()["results"]) == 40
        assert first.result().status_code == 200


def test_tei_truncate_false_refuses_a_text_that_would_be_cut(unbatched):
    texts = ["short", " ".join(SEED_DOCUMENTS * 8)]  # over --max-length 1024 tokens
    refused = httpx.post(f"{unbatched.url}/rerank", json={"query": SEED_QUERY, "texts": texts, "truncate": False})
    assert refused.status_code == 413 and refused.json()["field"] == "texts[1]"
    assert "truncate: true" in refused.json()["message"]
    assert httpx.post(f"{unbatched.url}/rerank", json={"query": SEED_QUERY, "texts": texts}).status_code == 200


def test_unbatched_server_gives_each_request_its_own_engine_call(unbatched):
    calls = metric(unbatched.url, "genrank_batch_requests_count")
    assert calls > 0 and metric(unbatched.url, "genrank_batch_requests_bucket", le="1.0") == calls


def test_sigterm_mid_load_finishes_in_flight_requests_and_exits_0(unbatched):
    bodies = [{"query": f"{SEED_QUERY} {n}", "documents": [f"{d} {n}" for d in SEED_DOCUMENTS * 6]} for n in range(6)]
    answered = functools.partial(metric, unbatched.url, "genrank_requests_total", endpoint="/v2/rerank", status="200")
    before = answered()
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(httpx.post, f"{unbatched.url}/v2/rerank", json=b, timeout=120) for b in bodies]
        # all admitted (on a loaded machine the first can be answered before the last is admitted)
        _wait_for(lambda: metric(unbatched.url, "genrank_pending_pairs") + 36 * (answered() - before)
                  >= 36 * len(bodies))
        unbatched.proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: "Shutting down" in unbatched.log())
        time.sleep(0.2)
        with pytest.raises(httpx.TransportError):  # no new connections once it stops accepting
            httpx.post(f"{unbatched.url}/v2/rerank", json=bodies[0], timeout=5)
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * len(bodies)
    assert all(len(a.json()["results"]) == 36 for a in answers)
    assert unbatched.proc.wait(60) == 0


def test_sigterm_with_stalled_uploads_exits_within_the_shutdown_timeout(tiny_model_dir, tmp_path):
    """Clients that stall mid-body (a body timeout longer than the shutdown's) and an idle keep-alive
    connection cannot hold SIGTERM past --shutdown-timeout; the stalled requests get 503, no traceback."""
    proc = ServeProcess(["--model", str(tiny_model_dir), "--engine", "hf", "--api-key", KEY, "--body-timeout", "60",
                         "--shutdown-timeout", "3"], tmp_path / "server.log").wait_ready()
    body = json.dumps({"query": "q", "documents": ["d"] * 100}).encode()
    idle = socket.create_connection(("127.0.0.1", proc.port))
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
    stalled = [_upload_start(proc.port, body, 50) for _ in range(3)]
    try:
        time.sleep(0.5)
        start = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: "Finished server process" in proc.log(), timeout=30)
        assert time.monotonic() - start < 3 + 2  # then the interpreter exits (seconds, on a loaded machine)
        assert proc.proc.wait(60) == 0
        for s in stalled:
            s.settimeout(5)
            assert s.recv(65536).startswith(b"HTTP/1.1 503 ")
    finally:
        for s in [idle, *stalled]:
            s.close()
        proc.stop()
    assert "Traceback" not in proc.log() and "Exception in ASGI" not in proc.log()


# -- the command line --------------------------------------------------------------------------


def test_help_defaults_match_the_library(capsys):
    from genrank.cli import main
    from genrank.serve import ServeSettings

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    s = ServeSettings()
    for flag, value in (("--max-batch-pairs", s.max_batch_pairs), ("--batch-wait-ms", s.batch_wait * 1000),
                        ("--max-documents", s.max_documents), ("--max-body-mb", s.max_body_bytes / 2**20),
                        ("--max-queue-pairs", s.max_queue_pairs), ("--request-timeout", s.request_timeout),
                        ("--body-timeout", s.body_timeout), ("--shutdown-timeout", s.shutdown_timeout)):
        help_text = out.split(f"{flag} {flag[2:].upper().replace('-', '_')}")[-1]
        default = help_text.split("(default: ")[1].split(")")[0]
        assert float(default) == value, flag
    assert "--host HOST address to listen on (default: 127.0.0.1)" in out
    assert "--port PORT port to listen on (default: 8000)" in out


def test_a_model_that_does_not_load_stops_the_server_with_one_line(tmp_path):
    proc = ServeProcess(["--model", str(tmp_path / "missing"), "--engine", "hf"], tmp_path / "log")
    assert proc.proc.wait(120) == 2
    log = proc.log()
    assert "genrank: error:" in log and "Traceback" not in log


def test_blank_api_key_is_refused(capsys):
    from genrank.cli import main

    assert main(["serve", "--api-key", " ", "--engine", "hf"]) == 2
    assert "--api-key must not be blank" in capsys.readouterr().err

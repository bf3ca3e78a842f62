"""The Reranker's async API: same results as the sync one, one model call at a time, event loop free."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY

from genrank import Engine, Reranker

QUERIES = [SEED_QUERY, "Who wrote Moby-Dick?", "Which novels did Jane Austen write?", "Best selling fantasy books",
           "Jazz Age millionaire"]


class WatchedEngine(Engine):
    """The tiny model's engine, recording overlapping calls, the threads it ran on and the ticks seen meanwhile."""

    def __init__(self, engine, delay: float = 0.0):
        self.engine, self.delay = engine, delay
        self.running = self.most_running = self.calls = self.done = 0
        self.threads: set[int] = set()
        self.ticks_during: list[int] = []
        self.ticks = 0
        self._lock = threading.Lock()

    prompt_format = "tokens"

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def label_logprobs(self, prompts, labels):
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most_running = max(self.most_running, self.running)
            self.threads.add(threading.get_ident())
        start = self.ticks
        try:
            time.sleep(self.delay)  # widens the window in which a second call would overlap
            return self.engine.label_logprobs(prompts, labels)
        finally:
            self.ticks_during.append(self.ticks - start)
            with self._lock:
                self.running -= 1
                self.done += 1


@pytest.fixture(scope="module")
def reranker(hf_engine):
    return Reranker(engine=hf_engine)


def test_async_methods_equal_the_sync_ones(reranker):
    pairs = [(q, d) for q in QUERIES[:2] for d in SEED_DOCUMENTS]
    long = [*pairs, (SEED_QUERY, " ".join(SEED_DOCUMENTS) * 6)]  # over max_length: several windows

    async def main():
        return (await reranker.arank(SEED_QUERY, SEED_DOCUMENTS, top_k=3, return_documents=True),
                await reranker.arerank(SEED_QUERY, SEED_DOCUMENTS), await reranker.ascore(pairs),
                await reranker.ascore_details(long, long_documents="chunks"),
                await reranker.ascore_details(pairs, max_document_tokens=8),
                await reranker.arank(SEED_QUERY, []), await reranker.ascore_details([]))

    ranked, reranked, scores, windowed, cut, no_rank, no_details = asyncio.run(main())
    sync_ranked = reranker.rank(SEED_QUERY, SEED_DOCUMENTS, top_k=3, return_documents=True)
    assert [r["corpus_id"] for r in ranked] == [r["corpus_id"] for r in sync_ranked]
    assert [r["text"] for r in ranked] == [r["text"] for r in sync_ranked]
    assert [r["score"] for r in ranked] == pytest.approx([r["score"] for r in sync_ranked], abs=1e-9)
    assert reranked == pytest.approx(reranker.rerank(SEED_QUERY, SEED_DOCUMENTS), abs=1e-9)
    assert scores == pytest.approx(reranker.score(pairs), abs=1e-9)
    sync = reranker.score_details(long, long_documents="chunks")
    assert windowed.windows.tolist() == sync.windows.tolist() and windowed.windows[-1] > 1
    sync_cut = reranker.score_details(pairs, max_document_tokens=8)
    assert cut.truncated.tolist() == sync_cut.truncated.tolist() and cut.truncated.all()
    for got, want in ((windowed, sync), (cut, sync_cut)):
        for name in ("score", "relevance", "label_mass"):
            assert np.allclose(getattr(got, name), getattr(want, name), atol=1e-9), name
        assert got.errors == want.errors == {}
    assert no_rank == [] and len(no_details) == 0


def test_concurrent_aranks_are_correct_and_the_model_runs_one_call_at_a_time(hf_engine, reranker):
    watched = WatchedEngine(hf_engine, delay=0.02)
    concurrent = Reranker(engine=watched)
    rng = np.random.default_rng(0)
    jobs = [(QUERIES[n % 5], [SEED_DOCUMENTS[i] for i in rng.permutation(6)[: 2 + n % 5]]) for n in range(20)]
    expected = [reranker.rank(q, docs) for q, docs in jobs]

    async def main():
        # a sync call from another thread at the same time shares the one-call-at-a-time rule
        sync_call = asyncio.to_thread(concurrent.rank, *jobs[0])
        return await asyncio.gather(*(concurrent.arank(q, docs) for q, docs in jobs), sync_call)

    *results, sync_result = asyncio.run(main())
    assert watched.calls == 21
    assert watched.most_running == 1, "two engine calls ran at once"
    assert threading.main_thread().ident not in watched.threads  # never on the event loop's thread
    for got, want in zip([*results, sync_result], [*expected, expected[0]], strict=True):
        assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-9)


def test_queued_aranks_leave_the_default_executor_free(hf_engine):
    """Calls waiting for the model must not hold the threads that the application's other to_thread work needs."""
    watched = WatchedEngine(hf_engine, delay=0.1)
    reranker = Reranker(engine=watched)

    async def main():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(4))
        calls = [asyncio.create_task(reranker.arank(SEED_QUERY, SEED_DOCUMENTS[:2])) for _ in range(12)]
        while not watched.calls:  # the first engine call has started
            await asyncio.sleep(0.005)
        engine_calls_done = await asyncio.to_thread(lambda: watched.done)
        await asyncio.gather(*calls)
        return engine_calls_done

    assert asyncio.run(main()) <= 2  # it ran at once, not after the queue of engine calls


async def ticking(watched: WatchedEngine, call):
    """``await call()`` while a coroutine counts ticks of the event loop into ``watched``."""
    stop = asyncio.Event()

    async def ticker():
        while not stop.is_set():
            watched.ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    try:
        return await call()
    finally:
        stop.set()
        await task


def test_event_loop_keeps_running_while_the_model_scores(hf_engine):
    watched = WatchedEngine(hf_engine, delay=0.3)
    reranker = Reranker(engine=watched)
    assert len(asyncio.run(ticking(watched, lambda: reranker.arank(SEED_QUERY, SEED_DOCUMENTS)))) == 6
    assert watched.ticks_during[0] >= 10, f"the event loop ticked {watched.ticks_during[0]} times in 0.3 s of scoring"


def langchain_call(reranker):
    from langchain_core.documents import Document

    from genrank.integrations.langchain import GenrankRerank

    docs = [Document(page_content=d) for d in SEED_DOCUMENTS]
    return lambda: GenrankRerank(reranker=reranker).acompress_documents(docs, SEED_QUERY)


def llama_index_call(reranker):
    from llama_index.core.schema import NodeWithScore, TextNode

    from genrank.integrations.llama_index import GenrankRerank

    nodes = [NodeWithScore(node=TextNode(text=d)) for d in SEED_DOCUMENTS]
    return lambda: GenrankRerank(reranker=reranker).apostprocess_nodes(nodes, query_str=SEED_QUERY)


def haystack_call(reranker):
    from haystack import Document

    from genrank.integrations.haystack import GenrankRanker

    ranker = GenrankRanker("unused")
    ranker.reranker = reranker
    return lambda: ranker.run_async(SEED_QUERY, [Document(content=d) for d in SEED_DOCUMENTS])


@pytest.mark.parametrize("adapter", [langchain_call, llama_index_call, haystack_call])
def test_framework_adapters_score_off_the_event_loop(hf_engine, adapter):
    watched = WatchedEngine(hf_engine, delay=0.2)
    assert asyncio.run(ticking(watched, adapter(Reranker(engine=watched))))
    assert watched.calls == 1 and watched.ticks_during[0] >= 5, f"{watched.ticks_during} ticks while scoring"


class RemoteLikeEngine(Engine):
    """The tiny model behind a native async engine that takes ``max_calls_in_flight`` calls at once (as a
    remote one does), recording how many of its calls overlap."""

    prompt_format = "tokens"
    native_async = True

    def __init__(self, engine, max_calls_in_flight: int):
        self.engine, self.max_calls_in_flight = engine, max_calls_in_flight
        self.running = self.most_running = 0

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def label_logprobs(self, prompts, labels):
        return self.engine.label_logprobs(prompts, labels)

    async def alabel_logprobs(self, prompts, labels, *, executor=None):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.05)  # the server's latency
            return self.engine.label_logprobs(prompts, labels)
        finally:
            self.running -= 1


def test_async_scoring_keeps_the_engines_calls_in_flight(hf_engine, reranker):
    pairs = [(q, d) for q in QUERIES[:2] for d in SEED_DOCUMENTS]  # 12 pairs: 6 chunks of 2
    engine = RemoteLikeEngine(hf_engine, max_calls_in_flight=3)
    rr = Reranker(engine=engine, chunk_size=2)
    got = asyncio.run(rr.ascore_details(pairs))
    assert engine.most_running == 3  # as score_stream keeps them on the sync path
    np.testing.assert_allclose(got.score, reranker.score(pairs), atol=1e-5)
    assert rr.score_details(pairs).score.tolist() == pytest.approx(got.score.tolist(), abs=1e-5)

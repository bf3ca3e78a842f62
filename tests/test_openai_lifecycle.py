"""Closing the OpenAI driver is final, safe from any thread and more than once, and ends the calls in flight."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("aiohttp", reason="the openai engine's packages are not installed (pip install 'genrank[openai]')")

from openai_test_server import FakeOpenAIServer

from genrank.engines.openai import OpenAIEngine
from genrank.prompts import Labels, PromptBuilder
from genrank.templates import load_template

LABELS_1_7 = Labels(tuple("1234567"))


def chat_prompts(documents: list[str]):
    return PromptBuilder(load_template("lb-reranker-v1")).build(["query"] * len(documents), documents)


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "genrank-openai"]


def test_a_closed_engine_stays_closed():
    prompts = chat_prompts(["a", "b"])
    with FakeOpenAIServer() as server:
        engine = OpenAIEngine("test-model", base_url=server.url)
        assert engine.label_logprobs(prompts, LABELS_1_7).errors == {}
        threads = engine_threads()
        engine.close()
        engine.close()  # twice is fine
        with pytest.raises(RuntimeError, match="the engine is closed"):
            engine.label_logprobs(prompts, LABELS_1_7)
        with pytest.raises(RuntimeError, match="the engine is closed"):
            asyncio.run(engine.alabel_logprobs(prompts, LABELS_1_7))
        asyncio.run(engine.aclose())
        sent = len(server.requests)
    assert sent == 2 and engine_threads() == [t for t in threads if t.is_alive()] and engine.is_closed


def test_an_engine_closed_before_use_never_starts():
    before = engine_threads()
    engine = OpenAIEngine("test-model", base_url="http://127.0.0.1:9/v1")
    with engine:
        pass
    with pytest.raises(RuntimeError, match="the engine is closed"):
        engine.label_logprobs(chat_prompts(["a"]), LABELS_1_7)
    assert engine_threads() == before


def test_closing_from_many_threads_ends_the_calls_in_flight_on_every_loop():
    with FakeOpenAIServer(latency=0.05) as server:
        engine = OpenAIEngine("test-model", base_url=server.url, concurrency=2)

        def in_own_loop():
            return asyncio.run(engine.alabel_logprobs(chat_prompts([f"own {n}" for n in range(200)]), LABELS_1_7))

        with ThreadPoolExecutor(10) as pool:
            calls = [pool.submit(engine.label_logprobs, chat_prompts([f"bg {n}" for n in range(200)]), LABELS_1_7),
                     pool.submit(in_own_loop)]
            while len(server.requests) < 6:
                time.sleep(0.01)
            closes = [pool.submit(engine.close) for _ in range(8)]
            assert [c.result() for c in closes] == [None] * 8
            for call in calls:
                with pytest.raises(RuntimeError, match="the engine (was closed while this call was running|is closed)"):
                    call.result(10)
        sent = len(server.requests)
        time.sleep(0.3)
        assert len(server.requests) == sent < 40  # nothing more went out
    assert engine.is_closed

"""The OpenAI driver's limits are the engine's: the same for calls from any threads and event loops."""

from __future__ import annotations

import asyncio
import json
import threading
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


def most_in_flight(requests: list[dict]) -> int:
    """The most requests the server was working on at once."""
    events = sorted([(r["time"], 1) for r in requests] + [(r["answered"], -1) for r in requests])
    most = now = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


def test_calls_from_three_event_loops_share_the_engines_concurrency():
    with FakeOpenAIServer(latency=0.03) as server:
        engine = OpenAIEngine("test-model", base_url=server.url, concurrency=4, backup_requests=0)
        start = threading.Barrier(3)

        def blocking() -> object:  # the engine's background loop
            start.wait()
            return engine.label_logprobs(chat_prompts([f"sync {n}" for n in range(40)]), LABELS_1_7)

        def in_own_loop(tag: str) -> object:  # a caller's event loop, e.g. a server's
            start.wait()
            return asyncio.run(engine.alabel_logprobs(chat_prompts([f"{tag} {n}" for n in range(40)]), LABELS_1_7))

        with ThreadPoolExecutor(3) as pool:
            outs = [pool.submit(blocking), pool.submit(in_own_loop, "a"), pool.submit(in_own_loop, "b")]
            outs = [out.result() for out in outs]
        engine.close()
    assert all(out.errors == {} for out in outs) and len(server.requests) == 120
    assert 3 <= most_in_flight(server.requests) <= 4


def test_a_429_seen_on_one_event_loop_pauses_the_others():
    with FakeOpenAIServer(latency=0.02, retry_after="1") as server:
        engine = OpenAIEngine("test-model", base_url=server.url, concurrency=2, backup_requests=0)
        with ThreadPoolExecutor(1) as pool:  # a long call on the engine's background loop
            busy_loop = pool.submit(engine.label_logprobs, chat_prompts([f"doc {n}" for n in range(150)]), LABELS_1_7)
            while len(server.requests) < 10:
                threading.Event().wait(0.01)
            paused = asyncio.run(engine.alabel_logprobs(chat_prompts(["busy [[fault:429:1]]"]), LABELS_1_7))
            other = busy_loop.result()
        engine.close()
    busy = next(r for r in server.requests if "fault:429" in json.dumps(r["body"]))
    during = [r for r in server.requests if busy["answered"] + 0.3 < r["time"] < busy["answered"] + 0.9]
    assert paused.errors == {} and other.errors == {} and len(server.requests) == 152
    assert server.requests[-1]["time"] > busy["answered"] + 0.9  # the other call was still sending after it
    assert during == []

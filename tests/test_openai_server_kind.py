"""The OpenAI driver asks which server it talks to once, before its first request, and never guesses."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

pytest.importorskip("aiohttp", reason="the openai engine's packages are not installed (pip install 'genrank[openai]')")
openai = pytest.importorskip("openai")

from openai_test_server import FakeOpenAIServer

from genrank.engines.openai import OpenAIEngine
from genrank.prompts import Labels, PromptBuilder
from genrank.templates import load_template

LABELS = Labels(tuple("1234567"), token_ids=tuple(range(15, 22)))


def chat_prompts(documents: list[str]):
    return PromptBuilder(load_template("lb-reranker-v1")).build(["query"] * len(documents), documents)


def test_a_server_check_that_fails_once_is_retried_and_the_whole_run_scores_one_way():
    with FakeOpenAIServer(vllm_version="0.32.0", models_failures=1) as server:
        engine = OpenAIEngine("test-model", base_url=server.url)
        first = engine.label_logprobs(chat_prompts([f"doc {n}" for n in range(5)]), LABELS)
        second = engine.label_logprobs(chat_prompts([f"more {n}" for n in range(5)]), LABELS)
        engine.close()
    assert first.errors == second.errors == {} and server.gets["/v1/models"] == 2
    assert [r["body"].get("logprob_token_ids") for r in server.requests] == [list(range(15, 22))] * 10


def test_concurrent_first_calls_ask_the_server_once():
    with FakeOpenAIServer(vllm_version="0.32.0") as server:
        engine = OpenAIEngine("test-model", base_url=server.url)
        blocking = threading.Thread(target=engine.label_logprobs, args=(chat_prompts(["from a thread"]), LABELS))

        async def many():
            blocking.start()
            return await asyncio.gather(*(engine.alabel_logprobs(chat_prompts([f"doc {n}"]), LABELS)
                                          for n in range(6)))

        outs = asyncio.run(many())
        blocking.join()
        engine.close()
    assert all(out.errors == {} for out in outs) and len(server.requests) == 7
    assert server.gets == {"/v1/models": 1, "/version": 1}


def test_a_server_that_cannot_be_told_fails_the_call_and_says_how_to_name_it():
    with FakeOpenAIServer(models_failures=math.inf) as server:
        engine = OpenAIEngine("test-model", base_url=server.url, max_retries=2)
        with pytest.raises(openai.APIConnectionError) as raised:
            engine.label_logprobs(chat_prompts(["a", "b"]), LABELS)
        engine.close()
    message = str(raised.value)
    assert "cannot tell what kind of server" in message and "HTTP 503" in message and "after 3 attempts" in message
    assert "server='vllm'" in message and "server='other'" in message and "\n" not in message
    assert server.gets["/v1/models"] == 3 and server.requests == []  # nothing was scored


@pytest.mark.parametrize("kind, asks_label_ids", [("vllm", True), ("other", False)])
def test_naming_the_server_skips_the_check(kind, asks_label_ids):
    with FakeOpenAIServer(models_failures=math.inf) as server:
        engine = OpenAIEngine("test-model", base_url=server.url, server=kind)
        out = engine.label_logprobs(chat_prompts(["a", "b"]), LABELS)
        engine.close()
    assert out.errors == {} and server.gets == {}
    assert all(("logprob_token_ids" in r["body"]) == asks_label_ids for r in server.requests)
    with pytest.raises(ValueError, match="server must be 'auto' .*, 'vllm' .* or 'other', got 'sglang'"):
        OpenAIEngine("test-model", server="sglang")


def test_scoring_method_says_what_is_sent_and_read_and_asks_the_server_once(tiny_tokenizer):
    with FakeOpenAIServer(vllm_version="0.32.0") as server:
        engine = OpenAIEngine("test-model", base_url=server.url, tokenizer=tiny_tokenizer)
        assert engine.scoring_method == "token ids; label token ids"
        assert engine.label_logprobs(chat_prompts(["a"]), LABELS).errors == {}
        assert engine.scoring_method == "token ids; label token ids"
        engine.close()
        other = OpenAIEngine("test-model", base_url=server.url, server="other", top_logprobs=5)
        assert other.scoring_method == "chat messages; top 5 log-probs"
        assert OpenAIEngine("m", server="other", content="verbatim").scoring_method == \
            "chat messages (content verbatim); top 20 (5 if refused) log-probs"
    assert server.gets == {"/v1/models": 1, "/version": 1}

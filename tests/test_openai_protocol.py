"""The OpenAI driver's request bodies and response parsing, as pure functions on JSON (no server)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("aiohttp", reason="the openai engine's packages are not installed (pip install 'genrank[openai]')")

from genrank.engines.openai.errors import retry_after
from genrank.engines.openai.protocol import (endpoint, extractor, owned_by_vllm, refuses_top_logprobs, request_body,
                                             request_head, returns_chosen_logprobs)
from genrank.prompts import Labels

MESSAGES = [{"role": "system", "content": "Rate 1-7."}, {"role": "user", "content": "q / d"}]


@pytest.mark.parametrize("chat, ids, prefix, top, want", [
    (True, None, False, 20, {"messages": MESSAGES, "logprobs": True, "top_logprobs": 20}),
    (False, None, False, 5, {"prompt": [1, 2, 3], "logprobs": 5}),
    (True, (15, 16), True, None, {"messages": MESSAGES, "logprobs": True, "continue_final_message": True,
                                  "add_generation_prompt": False, "logprob_token_ids": [15, 16],
                                  "return_tokens_as_token_ids": True}),
    (False, (15, 16), False, None, {"prompt": [1, 2, 3], "logprobs": 1, "logprob_token_ids": [15, 16],
                                    "return_tokens_as_token_ids": True}),
])
def test_request_bodies(chat, ids, prefix, top, want):
    head = request_head("m", chat=chat, label_ids=ids, continue_final_message=prefix)
    body = json.loads(request_body(head, MESSAGES if chat else [1, 2, 3], chat=chat, top_logprobs=top))
    assert body == {"model": "m", "max_tokens": 1, "temperature": 0.0, **want}


VLLM_CHAT = """{"id": "chatcmpl-1", "object": "chat.completion", "model": "m", "choices": [{"index": 0,
  "message": {"role": "assistant", "content": "token_id:16"}, "finish_reason": "length",
  "logprobs": {"content": [{"token": "token_id:16", "logprob": -0.2, "bytes": [55],
    "top_logprobs": [{"token": "token_id:16", "logprob": -0.2}, {"token": "token_id:15", "logprob": -1.8}]}]}}]}"""
OPENAI_COMPLETIONS = """{"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": " 2",
  "logprobs": {"tokens": [" 2"], "token_logprobs": [-0.5], "text_offset": [0],
    "top_logprobs": [{" 2": -0.5, "2": -2.0, " two": -3.0}]}, "finish_reason": "length"}]}"""


def test_responses_are_read_by_token_id_or_by_text():
    assert extractor(Labels(("1", "2")), ids=(15, 16))(json.loads(VLLM_CHAT)) == pytest.approx([-1.8, -0.2])
    got = extractor(Labels(("1", "2")), ids=None)(json.loads(OPENAI_COMPLETIONS))
    assert got[0] == -math.inf and got[1] == pytest.approx(math.log(math.exp(-0.5) + math.exp(-2.0)))


def test_a_refusal_of_top_logprobs_and_the_servers_kind_are_read_from_answers():
    refusal = '{"error": {"message": "top_logprobs must be at most 5, got 20", "type": "invalid_request_error"}}'
    assert refuses_top_logprobs(400, refusal) and not refuses_top_logprobs(400, '{"error": {"message": "too long"}}')
    assert not refuses_top_logprobs(500, refusal)
    assert owned_by_vllm({"data": [{"id": "m", "owned_by": "vllm"}]}) and not owned_by_vllm(None)
    assert not owned_by_vllm({"data": [{"id": "gpt", "owned_by": "openai"}]})
    assert returns_chosen_logprobs("0.32.0") and returns_chosen_logprobs("1.0.1") and not returns_chosen_logprobs("0.31.9")
    assert not returns_chosen_logprobs("")


def test_retry_after_and_endpoints():
    assert retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert retry_after({"Retry-After": "2"}) == 2.0 and retry_after({"Retry-After": "soon"}) is None
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date past
    assert str(endpoint("http://h/v1", "models", {"api-version": "1"})) == "http://h/v1/models?api-version=1"
    assert str(endpoint("http://h/v1", "version", {}, root=True)) == "http://h/version"

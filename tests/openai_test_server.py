"""A local OpenAI-compatible server (127.0.0.1) that injects the faults real servers produce now and then.

Answers ``/v1/chat/completions`` and ``/v1/completions`` with one-token responses whose top
logprobs are a deterministic function of the prompt (so a run with faults can be compared with a
fault-free run), plus ``/v1/models`` (and, posing as a vLLM server with ``vllm_version``,
``/version``). Faults:

* on a share ``fault_rate`` of prompts (chosen by a hash of the prompt), the first attempt(s) get
  one of ``FAULTS``;
* a prompt containing ``[[fault:KIND:N]]`` gets KIND on its first N attempts (N may be ``inf``);
  several markers take turns: ``[[fault:late-503:1]] [[fault:slow:1]]`` makes the first attempt
  ``late-503`` and the second ``slow``;
* with ``fail_every_request=(STATUS, MESSAGE)`` every completion request gets that error (a server
  that refuses the setup, e.g. 400 "max_tokens is not supported with this model");
* the first ``models_failures`` requests to ``/v1/models`` (may be ``math.inf``) get a 503 with
  ``Retry-After: 0.05`` (a server still starting, or overloaded).

Transient kinds (a correct client retries): ``429`` (with ``Retry-After``), ``500``, ``502``,
``503``, ``slow`` (answers after ``slow_seconds``), ``drop`` (closes the connection),
``malformed`` (truncated JSON); on markers only, ``late-503`` (a 503 after ``slow_seconds``).
Content kinds (a correct client reads the same scores): ``nondigit`` (near-miss tokens such as
"07", "7." and "seven" among the top tokens), ``whitespace`` (each label split into "7", " 7"
and "7\\n" with the same total probability).
Other kinds: any HTTP status (``400``, ``401``, ``404``, ``501``, ...), ``nologprobs`` (a well-formed answer without logprobs, as
from a gateway that drops them), ``echo-key`` (a 500 whose message repeats the Authorization
header, as careless gateways do), ``echo-key-long`` (the same after 480 characters of text),
``echo-key-401`` (a 401 that repeats it).

``chat_tokenizer`` (a transformers tokenizer) makes the server tokenize each chat request as a
real server does (the tokenizer's chat template, special-token text parsed as special tokens) and
record the ids in ``requests[n]["token_ids"]``. Each request record holds its arrival ``time``,
``answered`` (when its answer or error was sent) and ``peer``, the client's (host, port); ``gets``
counts the GET requests by path.

Run it standalone for benchmarks: ``python tests/openai_test_server.py --latency 0.02``
(``--fixed``: the same answer to every request, except to prompts with a fault marker).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import threading
import time
from collections import Counter

import numpy as np
from aiohttp import web

LABELS = ["1", "2", "3", "4", "5", "6", "7", "yes", "no"]
WORDS = ["the", "Hello", "a", "I", ".", "\n", "Score", "The", "**", "Rating", ":", "0", "8", "9", "10",
         "relevant", "not", "It", "This", "score"]
NEAR_MISSES = ["07", "7.", "seven", "\uff17", "+7", "7/7", "1-7", "3.5", "Seven", "7a"]
VOCAB = LABELS + WORDS
TRANSIENT = ["429", "500", "502", "503", "slow", "drop", "malformed"]
FAULTS = TRANSIENT + ["nondigit", "whitespace"]
_MARKER = re.compile(r"\[\[fault:([\w-]+):(\d+|inf)\]\]")


def distribution(key: str) -> list[tuple[str, float]]:
    """Deterministic (token, logprob) pairs over VOCAB for a prompt, most likely first."""
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    logits = np.random.default_rng(seed).normal(0.0, 2.0, len(VOCAB))
    logits[: len(LABELS)] += 2.0
    logp = logits - np.logaddexp.reduce(logits)
    order = np.argsort(-logp, kind="stable")
    return [(VOCAB[i], float(logp[i])) for i in order]


class FakeOpenAIServer:
    """The server on a background thread: ``with FakeOpenAIServer(...) as server: server.url``."""

    def __init__(self, *, fault_rate: float = 0.0, faults: list[str] = FAULTS, latency: float = 0.0,
                 slow_seconds: float = 3.0, max_top_logprobs: int = 20, retry_after: str = "1",
                 fixed: bool = False, vllm_version: str | None = None, port: int = 0,
                 fail_every_request: tuple[int, str] | None = None, chat_tokenizer=None,
                 models_failures: float = 0):
        self.fault_rate, self.faults, self.latency = fault_rate, list(faults), latency
        self.slow_seconds, self.max_top_logprobs, self.retry_after = slow_seconds, max_top_logprobs, retry_after
        self.fixed, self.vllm_version, self.port = fixed, vllm_version, port
        self.fail_every_request, self.chat_tokenizer = fail_every_request, chat_tokenizer
        self.models_failures = models_failures
        self.gets: Counter[str] = Counter()  # path -> GET requests seen
        self._fixed_bodies: dict[bool, bytes] = {}
        self.attempts: Counter[str] = Counter()  # prompt key -> requests seen
        self.requests: list[dict] = []  # {"path", "headers", "query", "body", "time", "answered"} of each request
        self.faults_served: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- lifecycle ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/version", self._version)
        return app

    def __enter__(self) -> FakeOpenAIServer:
        started = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            started.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name="fake-openai-server")
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("test server did not start")
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    # -- handlers ----------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        self.gets[request.path] += 1
        if self.gets[request.path] <= self.models_failures:
            return _error(503, "starting up", {"Retry-After": "0.05"})
        owner = "vllm" if self.vllm_version else "genrank-tests"
        return web.json_response({"object": "list", "data": [{"id": "test-model", "object": "model",
                                                             "owned_by": owner}]})

    async def _version(self, request: web.Request) -> web.Response:
        self.gets[request.path] += 1
        return web.json_response({"version": self.vllm_version}) if self.vllm_version else web.Response(status=404)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def _handle(self, request: web.Request, chat: bool) -> web.StreamResponse:
        raw = await request.read()
        if self.fixed and not self.fail_every_request and b"[[fault:" not in raw:
            return await self._fixed(chat)
        body = json.loads(raw)
        record = {"path": request.path, "headers": dict(request.headers), "query": dict(request.query),
                  "body": body, "peer": request.transport.get_extra_info("peername") if request.transport else None,
                  "time": time.monotonic()}
        self.requests.append(record)
        try:
            if chat and self.chat_tokenizer is not None:
                record["token_ids"] = self._tokenize_chat(body)
            if self.fail_every_request:
                return _error(*self.fail_every_request)
            key = json.dumps(body["messages"], sort_keys=True) if chat else json.dumps(body["prompt"])
            top = (body.get("top_logprobs") if chat else body.get("logprobs")) or 0
            return await self._answer(request, body, key, top, chat)
        finally:
            record["answered"] = time.monotonic()

    def _tokenize_chat(self, body: dict) -> list[int]:
        """The ids a real server gives the messages: its chat template, special-token text parsed."""
        continues = bool(body.get("continue_final_message"))
        text = self.chat_tokenizer.apply_chat_template(body["messages"], tokenize=False, continue_final_message=continues,
                                                       add_generation_prompt=not continues)
        return self.chat_tokenizer(text, add_special_tokens=False)["input_ids"]

    async def _answer(self, request: web.Request, body: dict, key: str, top: int, chat: bool) -> web.StreamResponse:
        attempt = self.attempts[key]
        self.attempts[key] += 1
        fault = self._fault(key, attempt)
        if fault:
            self.faults_served[fault] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if top > self.max_top_logprobs:
            return _error(400, f"top_logprobs must be at most {self.max_top_logprobs}, got {top}")
        if fault in ("slow", "late-503"):
            await asyncio.sleep(self.slow_seconds)
        if fault == "late-503":
            return _error(503, "injected late 503")
        if fault and fault.isdigit():
            headers = {"Retry-After": self.retry_after} if fault == "429" else None
            return _error(int(fault), f"injected {fault}", headers)
        if fault in ("echo-key", "echo-key-long", "echo-key-401"):
            before = "." * 480 if fault == "echo-key-long" else "upstream refused credentials"
            return _error(401 if fault == "echo-key-401" else 500, f"{before} {request.headers.get('Authorization')}")
        if fault == "drop":
            request.transport.close()
            return web.Response()
        if fault == "malformed":
            return web.Response(body=b'{"choices": [{"index": 0, "logprobs": {"con', content_type="application/json")
        entries = distribution(key)[:top]
        if fault == "nondigit":  # near misses replace the words, with their probabilities
            words = iter(NEAR_MISSES)
            entries = [(t if t in LABELS else next(words, t), lp) for t, lp in entries]
        if fault == "whitespace":
            third = math.log(1 / 3)
            entries = [v for t, lp in entries
                       for v in ([(t, lp + third), (" " + t, lp + third), (t + "\n", lp + third)] if t in LABELS
                                 else [(t, lp)])]
        token, logprob = entries[0] if entries else ("1", -1.0)
        logprobs = None if fault == "nologprobs" else _logprobs(entries, token, logprob, chat)
        choice = {"index": 0, "logprobs": logprobs, "finish_reason": "length"}
        choice.update({"message": {"role": "assistant", "content": token}} if chat else {"text": token})
        return web.json_response({"id": "x", "object": "chat.completion" if chat else "text_completion",
                                  "model": body.get("model"), "choices": [choice]})

    async def _fixed(self, chat: bool) -> web.Response:
        """Benchmark mode: the same 20-token answer to every request, so the server costs little CPU."""
        if chat not in self._fixed_bodies:
            entries = distribution("fixed")[:20]
            choice = {"index": 0, "logprobs": _logprobs(entries, entries[0][0], entries[0][1], chat),
                      "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": entries[0][0]}} if chat else {"text": entries[0][0]})
            self._fixed_bodies[chat] = json.dumps({"id": "x", "choices": [choice]}).encode()
        if self.latency:
            await asyncio.sleep(self.latency)
        return web.Response(body=self._fixed_bodies[chat], content_type="application/json")

    def _fault(self, key: str, attempt: int) -> str | None:
        found = _MARKER.findall(key)
        if found:
            for kind, n in found:  # each marker covers the next n attempts
                n = math.inf if n == "inf" else int(n)
                if attempt < n:
                    return kind
                attempt -= n
            return None
        if not self.fault_rate:
            return None
        h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=b"fault").digest(), "little")
        if (h % 10_000) >= self.fault_rate * 10_000:
            return None
        kind = self.faults[(h // 10_000) % len(self.faults)]
        repeats = 2 if kind in TRANSIENT and (h // 1_000_000) % 4 == 0 else 1  # some fail twice in a row
        return kind if attempt < repeats else None


def _logprobs(entries: list[tuple[str, float]], token: str, logprob: float, chat: bool) -> dict:
    if chat:
        top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in entries]
        return {"content": [{"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top}]}
    return {"tokens": [token], "token_logprobs": [logprob], "text_offset": [0], "top_logprobs": [dict(entries)]}


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "test", "code": status}},
                             status=status, headers=headers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--slow-seconds", type=float, default=3.0, help="how long a 'slow' fault takes to answer")
    parser.add_argument("--fixed", action="store_true",
                        help="the same answer to every request without a fault marker (cheap; benchmarks)")
    args = parser.parse_args()
    server = FakeOpenAIServer(latency=args.latency, fault_rate=args.fault_rate, fixed=args.fixed, port=args.port,
                              slow_seconds=args.slow_seconds)

    async def run() -> None:
        await server._start()
        print(server.url, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()

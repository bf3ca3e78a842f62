"""Ray Data path on a local CPU Ray: the single-process scores, resume exactly once, refusals.

Several seconds each: every run starts actors, and a resume first loads the checkpoint.
"""

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY
from standin_engine import events, scored_pairs, standin_reranker

from genrank import Reranker
from genrank.batch import score_file
from genrank.cli import main

ray = pytest.importorskip("ray")
from slow_sink import LateJsonlSink

import genrank.ray
from genrank.ray import EngineStartError, RayJobError, score_files_ray

QUERIES = [SEED_QUERY, "Who wrote Moby-Dick?", "Which novels did Jane Austen write?"]
TESTS = str(Path(__file__).parent)
ROWS = 2000


@pytest.fixture(scope="module")
def local_ray():
    # Workers import the stand-in engine from tests/. Ray 2.60 on 2 cores: a pipeline stalls at
    # num_cpus=2; 4 logical CPUs and half a CPU per actor run.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    # vLLM on CPU in an actor (this job's workers only): its engine core in the actor's process, a small KV cache
    vllm_on_cpu = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 << 20, runtime_env={"env_vars": vllm_on_cpu})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def read_folder(path, id_field="id"):
    """Rows of a Ray output folder (JSONL or Parquet files) by id; an id written twice fails."""
    rows = []
    for f in sorted(Path(path).iterdir()):
        if f.suffix == ".parquet":
            rows += pq.read_table(f).to_pylist()
        else:
            rows += [json.loads(line) for line in f.read_text().splitlines()]
    by_id = {r[id_field]: r for r in rows}
    assert len(by_id) == len(rows), "an id was written twice"
    return by_id


def write_pairs(path, rows):
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def big_input(path, id_field="pid"):
    return write_pairs(path, [{id_field: f"p{n}", "query": f"q{n % 7}", "document": f"document {n}"}
                              for n in range(ROWS)])


def committed(output):
    """Ids Ray's checkpoint has committed (pending ones do not count)."""
    ckpt = Path(f"{output}.ckpt")
    files = [f for f in ckpt.glob("*.parquet") if not f.name.endswith(".pending.parquet")] if ckpt.exists() else []
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def snapshot(folder):
    """Every file under ``folder`` with its bytes and mtime."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(folder).rglob("*") if p.is_file()}


def test_ray_gives_the_single_process_scores(local_ray, tmp_path, tiny_model_dir, hf_engine):
    pairs = [{"id": f"p{n}", "query": q, "document": d}
             for n, (q, d) in enumerate((q, d) for q in QUERIES for d in SEED_DOCUMENTS)]
    pairs.append({"id": "bad", "query": "q", "document": None})
    src = write_pairs(tmp_path / "in.jsonl", pairs)
    score_file(src, tmp_path / "single.jsonl", Reranker(engine=hf_engine), chunk_size=8)
    single = {r["id"]: r for r in map(json.loads, (tmp_path / "single.jsonl").read_text().splitlines())}

    make = functools.partial(Reranker, str(tiny_model_dir), engine="hf", device="cpu")
    summary = score_files_ray(src, tmp_path / "out", make, chunk_size=8, concurrency=2, num_cpus=0.5)
    assert (summary.pairs, summary.failed, summary.skipped) == (19, 1, 0)
    got = read_folder(tmp_path / "out")
    assert set(got) == set(single)
    for key, row in single.items():
        if key != "bad":  # the same JSON lines as genrank.batch writes: no error key where there is none
            assert set(got[key]) == {"id", "score", "label_mass"}
            assert got[key]["score"] == pytest.approx(row["score"], abs=1e-5)
    assert got["bad"] == {"id": "bad", "score": None, "label_mass": None,
                          "error": "id 'bad': field 'document' is null"}  # Ray knows no line numbers


def test_the_command_line_scores_lists_of_documents_in_parquet_and_reruns_nothing(local_ray, tmp_path, tiny_model_dir,
                                                                                   hf_engine, capsys):
    single = Reranker(engine=hf_engine).score([(q, d) for q in QUERIES for d in SEED_DOCUMENTS])
    src = tmp_path / "lists.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": n, "query": q, "docs": SEED_DOCUMENTS} for n, q in enumerate(QUERIES)]), src)
    assert main(["score", str(src), "-o", str(tmp_path / "lists"), "--ray", "--documents-field", "docs",
                 "--chunk-size", "2", "--num-cpus", "0.5", "-m", str(tiny_model_dir), "-e", "hf"]) == 0
    assert "18 pairs scored, 0 failed" in capsys.readouterr().err
    got = read_folder(tmp_path / "lists")
    flat = [s for n in range(3) for s in got[n]["score"]]
    assert flat == pytest.approx(list(single), abs=1e-5)
    assert main(["score", str(src), "-o", str(tmp_path / "lists"), "--ray", "--documents-field", "docs",
                 "--num-cpus", "0.5", "-m", str(tiny_model_dir), "-e", "hf"]) == 0
    assert "0 pairs scored, 0 failed, 18 already done" in capsys.readouterr().err


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_a_failed_job_resumes_exactly_once_and_scores_only_what_is_missing(local_ray, tmp_path, ext):
    src = big_input(tmp_path / f"in{ext}")
    out, log = tmp_path / "out", str(tmp_path / "scored.log")
    run = functools.partial(score_files_ray, src, out, id_field="pid", chunk_size=100, num_cpus=0.5)
    with pytest.raises(RayJobError, match=r"^the Ray job stopped: RuntimeError: stand-in engine stopped on call 6;"):
        run(functools.partial(standin_reranker, fail_on_call=6, log=log))
    done, first = committed(out), scored_pairs(log)
    assert done < ROWS

    summary = run(functools.partial(standin_reranker, log=log))
    got = read_folder(out, "pid")
    assert sorted(got) == sorted(f"p{n}" for n in range(ROWS))  # every id exactly once
    assert (summary.pairs, summary.skipped, summary.failed) == (ROWS - done, done, 0)
    assert scored_pairs(log) - first == ROWS - done  # the rerun scored only what was missing
    assert got["p5"]["score"] == pytest.approx(standin_reranker().score([("q5", "document 5")])[0])

    # a finished job: a rerun scores nothing and writes nothing
    before = snapshot(out)
    summary = run(functools.partial(standin_reranker, log=log))
    assert (summary.pairs, summary.skipped) == (0, ROWS)
    assert scored_pairs(log) - first == ROWS - done
    assert snapshot(out) == before


def test_a_killed_driver_resumes_exactly_once(local_ray, tmp_path):
    """The driver SIGKILLed mid-run on a running cluster; a new driver's rerun finishes the job."""
    src = big_input(tmp_path / "in.parquet")
    out, log = tmp_path / "out", str(tmp_path / "scored.log")
    script = (f"import functools, ray; from standin_engine import standin_reranker; from genrank.ray import "
              f"score_files_ray; ray.init(address={local_ray!r}, log_to_driver=False); score_files_ray("
              f"{str(src)!r}, {str(out)!r}, functools.partial(standin_reranker, seconds_per_pair=0.01, log={log!r}), "
              "id_field='pid', chunk_size=100, num_cpus=0.5)")
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=TESTS, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while committed(out) < 300 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert driver.poll() is None, "the driver finished before it could be killed"
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    done = committed(out)
    assert 300 <= done < ROWS

    summary = score_files_ray(src, out, functools.partial(standin_reranker, log=log), id_field="pid",
                              chunk_size=100, num_cpus=0.5)
    assert sorted(read_folder(out, "pid")) == sorted(f"p{n}" for n in range(ROWS))
    assert summary.pairs + summary.skipped == ROWS and summary.skipped >= done


@pytest.fixture
def finished(local_ray, tmp_path):
    """A finished small job: (input, output, the folder holding both)."""
    src = write_pairs(tmp_path / "in.jsonl", [{"id": n, "query": "q", "document": f"d{n}"} for n in range(20)])
    out = tmp_path / "out"
    score_files_ray(src, out, standin_reranker, chunk_size=8, num_cpus=0.5)
    return src, out, tmp_path


@pytest.mark.parametrize("change, message", [
    (functools.partial(standin_reranker, model_name="other"), "--model was 'standin', now 'other'"),
    (functools.partial(standin_reranker, template="lb-reranker-v1-instruct"),
     "--template was 'lb-reranker-v1', now 'lb-reranker-v1-instruct'"),
])
def test_a_resume_with_other_settings_is_refused_and_changes_nothing(finished, change, message):
    src, out, folder = finished
    before = snapshot(folder)
    with pytest.raises(ValueError, match="cannot be resumed by this run: " + message):
        score_files_ray(src, out, change, chunk_size=8, num_cpus=0.5)
    assert snapshot(folder) == before


@pytest.mark.parametrize("remove, message", [(".ckpt", "has no checkpoint"), (".genrank.json", "has no manifest")])
def test_an_output_without_checkpoint_or_manifest_is_refused_and_changes_nothing(finished, remove, message):
    src, out, folder = finished
    gone = Path(f"{out}{remove}")
    shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    before = snapshot(folder)
    with pytest.raises(ValueError, match=message):
        score_files_ray(src, out, standin_reranker, chunk_size=8, num_cpus=0.5)
    assert snapshot(folder) == before

    summary = score_files_ray(src, out, standin_reranker, chunk_size=8, num_cpus=0.5, overwrite=True)
    assert (summary.pairs, summary.skipped) == (20, 0)
    assert sorted(read_folder(out)) == list(range(20))
    assert Path(f"{out}.ckpt").is_dir() and Path(f"{out}.genrank.json").is_file()


def test_a_ray_without_checkpointing_refuses_an_existing_output_naming_the_version(finished, monkeypatch):
    src, out, folder = finished
    monkeypatch.setattr(genrank.ray, "CheckpointConfig", None)  # as in a Ray before ray.data.checkpoint
    before = snapshot(folder)
    needs = rf"^{re.escape(repr(str(out)))} exists and resuming it needs Ray 2.60 or later .*; this is Ray "
    with pytest.raises(ValueError, match=needs):
        score_files_ray(src, out, standin_reranker, chunk_size=8, num_cpus=0.5)
    assert snapshot(folder) == before


def test_repeated_or_missing_ids_are_refused_before_anything_is_written(local_ray, tmp_path):
    src = write_pairs(tmp_path / "in.parquet", [{"id": n % 5, "query": "q", "document": "d"} for n in range(8)])
    with pytest.raises(ValueError, match=r"ids repeat in field 'id' \(e\.g\. 0, 1, 2\)"):
        score_files_ray(src, tmp_path / "out", standin_reranker)
    src = write_pairs(tmp_path / "in.jsonl", [{"id": 1, "query": "q", "document": "d"}, {"query": "q", "document": "d"}])
    with pytest.raises(ValueError, match="1 rows have a null 'id'"):
        score_files_ray(src, tmp_path / "out", standin_reranker)
    with pytest.raises(ValueError, match="no column 'id'"):
        score_files_ray(write_pairs(tmp_path / "no-id.jsonl", [{"query": "q", "document": "d"}]), tmp_path / "out",
                        standin_reranker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "in.parquet", "no-id.jsonl"]


def test_an_engine_that_cannot_start_fails_the_job_in_one_line(local_ray, tmp_path, capsys):
    src = write_pairs(tmp_path / "in.jsonl", [{"id": 1, "query": "q", "document": "d"}])
    with pytest.raises(EngineStartError) as failed:
        score_files_ray(src, tmp_path / "out", functools.partial(standin_reranker, fail_to_start=True))
    assert str(failed.value) == ("the engine could not start on the cluster: "
                                 "RuntimeError: no GPU left for the stand-in engine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def most_rows_ahead_of_the_writes(log):
    """The most rows the engines had scored beyond those written, at any line of ``log``."""
    ahead = most = 0
    for _, event, rows in map(str.split, Path(log).read_text().splitlines()):
        ahead += int(rows) if event == "scored" else -int(rows) if event == "written" else 0
        most = max(most, ahead)
    return most


def test_the_actors_score_at_most_about_two_blocks_each_ahead_of_the_writes(local_ray, tmp_path, monkeypatch):
    """Writes that start late (new worker processes, a busy node) hold the actors back, so a kill loses little."""
    src = write_pairs(tmp_path / "in.jsonl", [{"id": n, "query": "q", "document": f"d{n}"} for n in range(1000)])
    log = str(tmp_path / "scored.log")
    monkeypatch.setattr(genrank.ray, "_JsonlSink", functools.partial(LateJsonlSink, seconds=3, log=log))
    summary = score_files_ray(src, tmp_path / "out", functools.partial(standin_reranker, log=log), chunk_size=50,
                              concurrency=2, num_cpus=0.5)
    assert summary.pairs == 1000 and len(read_folder(tmp_path / "out")) == 1000
    assert most_rows_ahead_of_the_writes(log) <= 2 * 3 * 50  # two blocks each, and one more Ray hands over


def test_every_reranker_the_job_builds_is_closed(local_ray, tmp_path):
    """The engine probe's and each actor's (an engine holds a GPU): closed when the job ends."""
    src = write_pairs(tmp_path / "in.jsonl", [{"id": n, "query": "q", "document": f"d{n}"} for n in range(20)])
    log = str(tmp_path / "scored.log")
    score_files_ray(src, tmp_path / "out", functools.partial(standin_reranker, log=log), chunk_size=5,
                    concurrency=2, num_cpus=0.5)
    deadline = time.monotonic() + 30  # actors close as Ray Data shuts its pool down, soon after the job
    while events(log, "closed") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert events(log, "closed") == 3


def test_unscorable_pairs_are_error_rows(local_ray, tmp_path):
    rows = [{"pid": f"r{n}", "query": "q", "document": "UNSCORABLE" if n == 3 else f"d{n}"} for n in range(10)]
    src = write_pairs(tmp_path / "in.parquet", rows)
    summary = score_files_ray(src, tmp_path / "out", standin_reranker, id_field="pid", num_cpus=0.5)
    assert (summary.pairs, summary.failed) == (10, 1)
    got = read_folder(tmp_path / "out", "pid")
    assert got["r3"]["score"] is None and got["r3"]["error"] == "stand-in cannot score this"
    assert got["r4"]["error"] is None and got["r4"]["score"] is not None


def test_the_local_ray_the_command_line_starts_has_the_cpus_a_resume_needs(local_ray, tmp_path, tiny_model_dir):
    """Without --address the command starts a Ray on this machine, sized for the job: on a resume Ray's
    checkpoint filter takes a CPU of its own, which on 2 cores left none to read the input with (a hang)."""
    src = write_pairs(tmp_path / "in.jsonl", [{"id": n, "query": "q", "document": f"d{n}"} for n in range(40)])
    out = tmp_path / "out"
    args = ["score", str(src), "-o", str(out), "--ray", "--chunk-size", "10", "-q", "-m", str(tiny_model_dir), "-e", "hf"]
    assert main(args) == 0  # on the test's Ray
    lost = sorted(out.iterdir())[0]  # a write that never committed: its data file and ids gone
    lost_rows = len(lost.read_text().splitlines())
    lost.unlink()
    Path(f"{out}.ckpt", lost.with_suffix(".parquet").name).unlink()

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "genrank.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"genrank score: {lost_rows} pairs scored, 0 failed, {40 - lost_rows} already done" in done.stderr
    assert sorted(read_folder(out)) == list(range(40))


@pytest.fixture
def ray_client_address(local_ray):
    """``ray://127.0.0.1:PORT``: a Ray Client server (its legacy mode, one process) in front of the local Ray."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ray.util.client.server", "--host", "127.0.0.1", "--port",
                               str(port), "--mode", "legacy", "--address", local_ray],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield f"ray://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_command_line_runs_through_ray_client(ray_client_address, tmp_path, tiny_model_dir):
    """``--address ray://...``: the job's driver runs on the cluster; its summary and refusals come back as one line."""
    src = write_pairs(tmp_path / "in.jsonl", [{"id": n, "query": "q", "document": f"d{n}"} for n in range(12)])
    command = [sys.executable, "-m", "genrank.cli", "score", str(src), "-o", str(tmp_path / "out"), "--ray",
               "--address", ray_client_address, "--chunk-size", "4", "--num-cpus", "0.5", "-q",
               "-m", str(tiny_model_dir), "-e", "hf"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "genrank score: 12 pairs scored, 0 failed" in done.stderr
    assert sorted(read_folder(tmp_path / "out")) == list(range(12))

    refused = subprocess.run([*command, "--template", "lb-reranker-v1-instruct"], capture_output=True, text=True,
                             timeout=120, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"genrank: error: {str(tmp_path / 'out')!r} cannot be resumed by this run: --template was 'lb-reranker-v1', "
        "now 'lb-reranker-v1-instruct'. Rerun with the earlier settings and input, start over with --overwrite, "
        "or choose another output")
    assert "Traceback" not in refused.stderr


def test_cpu_actors_score_through_a_vllm_server(local_ray, vllm_url, tmp_path, tiny_model_dir, hf_engine, capsys):
    """``--engine openai --base-url``: the actors only build prompts and call the server; the scores are the model's."""
    pairs = [{"id": n, "query": q, "document": d}
             for n, (q, d) in enumerate((q, d) for q in QUERIES for d in SEED_DOCUMENTS)]
    src = write_pairs(tmp_path / "in.jsonl", pairs)
    assert main(["score", str(src), "-o", str(tmp_path / "out"), "--ray", "--engine", "openai", "--base-url", vllm_url,
                 "-m", str(tiny_model_dir), "--concurrency", "2", "--num-cpus", "0.5", "--chunk-size", "6", "-q"]) == 0
    assert "18 pairs scored, 0 failed" in capsys.readouterr().err
    got = read_folder(tmp_path / "out")
    expected = Reranker(engine=hf_engine).score([(p["query"], p["document"]) for p in pairs])
    assert [got[n]["score"] for n in range(18)] == pytest.approx(list(expected), abs=1e-4)


def test_vllm_actors_score_from_the_command_line(local_ray, tmp_path, tiny_model_dir, hf_engine, capsys):
    """``--engine vllm``: one vLLM engine per actor (on CPU here: ``--num-gpus 0``); the scores are the model's."""
    pytest.importorskip("vllm")
    pairs = [{"id": n, "query": q, "document": d} for n, (q, d) in enumerate((SEED_QUERY, d) for d in SEED_DOCUMENTS)]
    src = write_pairs(tmp_path / "in.jsonl", pairs)
    assert main(["score", str(src), "-o", str(tmp_path / "out"), "--ray", "--engine", "vllm", "-m", str(tiny_model_dir),
                 "-E", "dtype=float32", "-E", "enforce_eager=true", "-E", "max_model_len=1024", "--num-gpus", "0",
                 "--num-cpus", "1", "-q"]) == 0
    assert f"{len(pairs)} pairs scored, 0 failed" in capsys.readouterr().err
    got = read_folder(tmp_path / "out")
    expected = Reranker(engine=hf_engine).score([(p["query"], p["document"]) for p in pairs])
    assert [got[n]["score"] for n in range(len(pairs))] == pytest.approx(list(expected), abs=1e-3)

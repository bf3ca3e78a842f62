import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from functools import partial

import httpx
import numpy as np
import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY
from wrapped_engine import WrappedEngine

from genrank import LabelLogprobs, Reranker
from genrank.batch import BatchSummary, score_file
from genrank.cli import main

QUERIES = [SEED_QUERY, "Who wrote Moby-Dick?", "Which novels did Jane Austen write?", "Best selling fantasy books",
           "When was The Great Gatsby published?"]
PAIRS = [{"id": f"p{n}", "query": q, "document": d}
         for n, (q, d) in enumerate((q, d) for q in QUERIES for d in SEED_DOCUMENTS)]  # 30 pairs


@pytest.fixture(scope="module")
def reranker(hf_engine):
    return Reranker(engine=hf_engine)


@pytest.fixture(scope="module")
def expected(reranker):
    """Scores of PAIRS from the Reranker itself, by id."""
    result = reranker.score_details([(p["query"], p["document"]) for p in PAIRS])
    return {p["id"]: (s, m) for p, s, m in zip(PAIRS, result.score, result.label_mass)}


def write_input(path, rows):
    """Write ``rows`` (dicts) to ``path`` in the format its extension names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_output(path):
    """Output rows as dicts, with scores as floats (None when empty) whatever the format."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            for k in ("score", "label_mass"):
                r[k] = json.loads(r[k]) if r[k] else None
            r["error"] = r["error"] or None
        return rows
    return pq.read_table(path).to_pylist()


def assert_matches(rows, expected, ids):
    """Ids in this order; scores as the Reranker gives them (float32 on CPU: batches of other
    shapes differ in the 7th digit)."""
    assert [r["id"] for r in rows] == ids
    for r in rows:
        score, mass = expected[r["id"]]
        assert r["score"] == pytest.approx(score, abs=1e-5) and r["label_mass"] == pytest.approx(mass, abs=1e-5)
        assert r.get("error") is None


class FailingEngine(WrappedEngine):
    """The tiny model, but documents containing "FAIL" get an engine error and call ``crash_on``
    (1-based) raises, as if the process died there."""

    def __init__(self, engine, crash_on=None, error="server said no"):
        super().__init__(engine)
        self.crash_on, self.calls, self.error = crash_on, 0, error

    def label_logprobs(self, prompts, labels):
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt("killed")
        out = self.inner.label_logprobs(prompts, labels)
        errors = {i: self.error for i, d in enumerate(prompts.documents) if "FAIL" in d}
        out.values[list(errors)] = -np.inf
        return LabelLogprobs(out.values, {**out.errors, **errors})


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_scores_every_pair_in_order(tmp_path, reranker, expected, ext):
    src = write_input(tmp_path / f"in{ext}", PAIRS)
    summary = score_file(src, tmp_path / f"out{ext}", reranker, chunk_size=7)
    assert (summary.pairs, summary.failed, summary.skipped) == (30, 0, 0)
    assert_matches(read_output(tmp_path / f"out{ext}"), expected, [p["id"] for p in PAIRS])
    assert not (tmp_path / f"out{ext}.parts").exists()


def test_field_names_and_missing_ids(tmp_path, reranker, expected):
    rows = [{"q": p["query"], "text": p["document"]} for p in PAIRS[:5]]
    src = write_input(tmp_path / "in.csv", rows)
    score_file(src, tmp_path / "out.csv", reranker, query_field="q", document_field="text", chunk_size=2)
    out = read_output(tmp_path / "out.csv")
    assert [r["id"] for r in out] == ["0", "1", "2", "3", "4"]  # row numbers stand in for ids
    for r, p in zip(out, PAIRS):
        assert r["score"] == pytest.approx(expected[p["id"]][0], abs=1e-5)


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_query_with_document_list(tmp_path, reranker, expected, ext):
    rows = [{"id": f"q{n}", "query": q, "docs": SEED_DOCUMENTS} for n, q in enumerate(QUERIES)]
    if ext == ".csv":
        rows = [{**r, "docs": json.dumps(r["docs"])} for r in rows]
    src = write_input(tmp_path / f"in{ext}", rows)
    summary = score_file(src, tmp_path / f"out{ext}", reranker, documents_field="docs", chunk_size=2)
    assert (summary.pairs, summary.failed) == (30, 0)
    out = read_output(tmp_path / f"out{ext}")
    assert [r["id"] for r in out] == ["q0", "q1", "q2", "q3", "q4"]
    flat = [s for r in out for s in r["score"]]
    assert flat == pytest.approx([expected[p["id"]][0] for p in PAIRS], abs=1e-5)


def test_malformed_jsonl_rows_are_reported_and_the_run_completes(tmp_path, reranker, expected):
    good = [json.dumps(p) for p in PAIRS[:4]]
    lines = [good[0], json.dumps({"id": "a", "document": "x"}), json.dumps({"id": "b", "query": None, "document": "x"}),
             good[1], json.dumps({"id": "c", "query": "q", "document": 42}), '{"id": "d", "query": "q", "docu',
             json.dumps(["not", "an", "object"]), json.dumps({"id": "e", "query": "  ", "document": "x"}), good[2]]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n\n" + good[3] + "\n")
    summary = score_file(src, tmp_path / "out.jsonl", reranker, chunk_size=3)
    assert (summary.pairs, summary.failed) == (10, 6)
    out = read_output(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ["p0", "a", "b", "p1", "c", 5, 6, "e", "p2", "p3"]
    errors = {r["id"]: r.get("error") for r in out}
    assert errors["a"] == "line 2: field 'query' is missing"
    assert errors["b"] == "line 3: field 'query' is null"
    assert errors["c"] == "line 5: field 'document' must be a string, got int 42"
    assert errors[5].startswith("line 6: not valid JSON")
    assert errors[6] == "line 7: expected an object with fields, got list"
    assert errors["e"] == "line 8: field 'query' is empty"
    assert all(errors[i] is None for i in ("p0", "p1", "p2", "p3"))
    assert all(r["score"] is None for r in out if r.get("error"))
    assert out[-1]["score"] == pytest.approx(expected["p3"][0], abs=1e-5)


def test_malformed_csv_and_parquet_rows_name_line_and_row(tmp_path, reranker):
    src = tmp_path / "in.csv"
    src.write_text('id,query,document\np0,q,fine\np1,q\n"p2","q","a\nmultiline doc"\np3,,x\n')
    score_file(src, tmp_path / "out.csv", reranker)
    errors = [r["error"] for r in read_output(tmp_path / "out.csv")]
    assert errors == [None, "line 3: field 'document' is missing", None, "line 6: field 'query' is empty"]

    src = write_input(tmp_path / "in.parquet", [{"id": 1, "query": "q", "document": "d"},
                                                {"id": 2, "query": "q", "document": None}])
    summary = score_file(src, tmp_path / "out.parquet", reranker)
    assert summary.failed == 1
    assert [r["error"] for r in read_output(tmp_path / "out.parquet")] == [None, "row 2: field 'document' is null"]


def test_engine_errors_are_written_per_pair(tmp_path, hf_engine, expected):
    rows = [dict(p) for p in PAIRS[:6]]
    rows[2]["document"] += " FAIL"
    src = write_input(tmp_path / "in.jsonl", rows)
    summary = score_file(src, tmp_path / "out.jsonl", Reranker(engine=FailingEngine(hf_engine)), chunk_size=4)
    assert (summary.pairs, summary.failed) == (6, 1)
    out = read_output(tmp_path / "out.jsonl")
    assert out[2] == {"id": "p2", "score": None, "label_mass": None, "error": "server said no"}
    assert_matches(out[:2] + out[3:], expected, ["p0", "p1", "p3", "p4", "p5"])


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_resume_after_a_crash_redoes_only_what_is_missing(tmp_path, hf_engine, expected, ext):
    src = write_input(tmp_path / f"in{ext}", PAIRS)
    out = tmp_path / f"out{ext}"
    crashing = Reranker(engine=FailingEngine(hf_engine, crash_on=3))
    with pytest.raises(KeyboardInterrupt):
        score_file(src, out, crashing, chunk_size=4)
    if ext == ".parquet":
        assert len(list((tmp_path / "out.parquet.parts").glob("part-*"))) == 2
        (tmp_path / "out.parquet.parts" / "part-000002.parquet.tmp").write_bytes(b"PAR1 torn")
    else:  # a torn last row, as a kill in the middle of a write leaves it
        with open(out, "a") as f:
            f.write('{"id": "p8", "score": 3.1' if ext == ".jsonl" else 'p8,3.1')
    summary = score_file(src, out, Reranker(engine=hf_engine), chunk_size=4)
    assert (summary.pairs, summary.skipped, summary.failed) == (22, 8, 0)
    assert_matches(read_output(out), expected, [p["id"] for p in PAIRS])

    again = score_file(src, out, Reranker(engine=hf_engine), chunk_size=4)  # nothing left to do
    assert (again.pairs, again.skipped) == (0, 30)
    assert_matches(read_output(out), expected, [p["id"] for p in PAIRS])


def test_output_of_another_input_is_refused(tmp_path, reranker):
    out = tmp_path / "out.jsonl"
    score_file(write_input(tmp_path / "a.jsonl", PAIRS[:3]), out, reranker)
    with pytest.raises(ValueError, match="the input changed .*a.jsonl'\\): its size was"):
        score_file(write_input(tmp_path / "b.jsonl", PAIRS[3:9]), out, reranker)
    with pytest.raises(ValueError, match="the input changed .*: its size was"):  # fewer rows
        score_file(write_input(tmp_path / "c.jsonl", PAIRS[:2]), out, reranker)


def test_foreign_output_files_are_left_alone(tmp_path, reranker):
    src = write_input(tmp_path / "in.parquet", PAIRS[:2])
    foreign = write_input(tmp_path / "out.parquet", [{"x": 1}])
    with pytest.raises(ValueError, match="is not genrank output"):
        score_file(src, foreign, reranker)
    assert pq.read_table(foreign).to_pylist() == [{"x": 1}]
    src = write_input(tmp_path / "in.csv", PAIRS[:2])
    (tmp_path / "out.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="is not genrank output"):
        score_file(src, tmp_path / "out.csv", reranker)
    assert (tmp_path / "out.csv").read_text() == "a,b\n1,2\n"


def test_foreign_jsonl_output_and_the_input_itself_are_left_alone(tmp_path, reranker):
    src = write_input(tmp_path / "in.jsonl", [{k: v for k, v in p.items() if k != "id"} for p in PAIRS[:2]])
    before = src.read_text()
    with pytest.raises(ValueError, match="is the input"):
        score_file(src, src, reranker)
    assert src.read_text() == before
    other = tmp_path / "other.jsonl"
    other.write_text('{"id": 1, "score": 2.0}\n{"text": "not scores"}\n')
    with pytest.raises(ValueError, match=r"is not genrank output: line 2"):
        score_file(src, other, reranker)
    assert other.read_text() == '{"id": 1, "score": 2.0}\n{"text": "not scores"}\n'


def test_csv_torn_inside_a_quoted_error_is_redone(tmp_path, hf_engine):
    rows = [dict(p) for p in PAIRS[:6]]
    rows[1]["document"] += " FAIL"
    rows[3]["document"] += " FAIL"
    src = write_input(tmp_path / "in.csv", rows)
    error = "server said:\nno"  # quoted in CSV: it holds a newline
    whole = tmp_path / "whole.csv"
    score_file(src, whole, Reranker(engine=FailingEngine(hf_engine, error=error)), chunk_size=2)
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):  # killed while scoring the second chunk...
        score_file(src, out, Reranker(engine=FailingEngine(hf_engine, crash_on=2, error=error)), chunk_size=2)
    with open(out, "ab") as f:  # ... or rather while writing it: cut inside the quoted error
        f.write(b'p2,3.5,0.9,\r\np3,,,"server said:\n')
    score_file(src, out, Reranker(engine=FailingEngine(hf_engine, error=error)), chunk_size=2)
    assert out.read_bytes() == whole.read_bytes()


def test_a_text_with_a_lone_surrogate_is_a_row_error(tmp_path, reranker, expected):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(PAIRS[0]) + "\n" + '{"id": "bad\\ud83d", "query": "q", "document": "x \\ud83d"}\n'
                   + json.dumps(PAIRS[1]) + "\n")
    summary = score_file(src, tmp_path / "out.jsonl", reranker)
    assert (summary.pairs, summary.failed) == (3, 1)
    out = read_output(tmp_path / "out.jsonl")
    assert out[1] == {"id": "bad\ud83d", "score": None, "label_mass": None,
                      "error": "line 2: field 'document' is not valid Unicode: lone surrogate '\\ud83d' at character 2"}
    assert_matches([out[0], out[2]], expected, ["p0", "p1"])
    assert score_file(src, tmp_path / "out.jsonl", reranker).skipped == 3  # the escaped id reads back the same


def test_csv_with_a_byte_order_mark_and_huge_cells(tmp_path, reranker, expected):
    src = tmp_path / "in.csv"
    rows = [{"id": "q0", "query": QUERIES[0], "docs": json.dumps(SEED_DOCUMENTS * 400)}]  # a 300 kB cell
    with open(src, "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    reranker_cached = Reranker(engine=reranker.engine)
    summary = score_file(src, tmp_path / "out.csv", reranker_cached, documents_field="docs")
    assert (summary.pairs, summary.failed) == (2400, 0)
    assert read_output(tmp_path / "out.csv")[0]["score"][:6] == pytest.approx(
        [expected[p["id"]][0] for p in PAIRS[:6]], abs=1e-5)


def test_unreadable_rows_in_list_mode_csv_have_empty_scores(tmp_path, reranker):
    src = tmp_path / "in.csv"
    src.write_text('id,query,docs\nq0,q,"[""a""]"\nq1,q,not json\n')
    score_file(src, tmp_path / "out.csv", reranker, documents_field="docs")
    assert (tmp_path / "out.csv").read_text().splitlines()[2].startswith('q1,,,"line 3: field \'docs\'')


def test_parquet_killed_while_finishing_is_complete_on_rerun(tmp_path, reranker, expected):
    src = write_input(tmp_path / "in.parquet", PAIRS[:8])
    out = tmp_path / "out.parquet"
    score_file(src, out, reranker, chunk_size=3)
    parts = tmp_path / "out.parquet.parts"  # finish() replaced OUTPUT, then died removing the parts
    parts.mkdir()
    pq.write_table(pq.read_table(out).slice(3, 3), parts / "part-000001.parquet")
    summary = score_file(src, out, reranker, chunk_size=3)
    assert (summary.pairs, summary.skipped) == (0, 8) and not parts.exists()
    assert_matches(read_output(out), expected, [p["id"] for p in PAIRS[:8]])


def test_shards_split_the_input_without_overlap(tmp_path, reranker, expected):
    src = write_input(tmp_path / "in.jsonl", PAIRS)
    ids = []
    for i in range(3):
        summary = score_file(src, tmp_path / f"out-{i}.jsonl", reranker, chunk_size=4, shard=(i, 3))
        rows = read_output(tmp_path / f"out-{i}.jsonl")
        assert summary.pairs == len(rows)
        assert [r["id"] for r in rows] == [p["id"] for k, p in enumerate(PAIRS) if k // 4 % 3 == i]
        ids += [r["id"] for r in rows]
        assert_matches(rows, expected, [r["id"] for r in rows])
    assert sorted(ids) == sorted(p["id"] for p in PAIRS)
    with pytest.raises(ValueError, match="shard"):
        score_file(src, tmp_path / "x.jsonl", reranker, shard=(3, 3))


def test_cli_exit_status_and_summary(tmp_path, tiny_model_dir, capsys):
    rows = [dict(p) for p in PAIRS[:3]]
    src = write_input(tmp_path / "in.jsonl", rows)
    args = ["score", str(src), "-o", str(tmp_path / "out.jsonl"), "-m", str(tiny_model_dir), "-e", "hf", "-q"]
    assert main(args) == 0
    assert "3 pairs scored, 0 failed" in capsys.readouterr().err
    rows[1]["query"] = None
    write_input(tmp_path / "bad.jsonl", rows)
    assert main(["score", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "bad-out.jsonl"), *args[4:]]) == 1
    assert "3 pairs scored, 1 failed" in capsys.readouterr().err
    assert main([*args[:3], str(tmp_path / "out.csv"), *args[4:]]) == 2  # output in another format
    assert "a .jsonl name" in capsys.readouterr().err


def test_sigkill_midway_then_rerun_gives_the_uninterrupted_output(tmp_path, tiny_model_dir, reranker):
    rows = [{"id": n, "query": QUERIES[n % 5], "document": SEED_DOCUMENTS[n % 6] + f" ({n})"} for n in range(100)]
    src = write_input(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "genrank.cli", "score", str(src), "-o", str(out), "--chunk-size", "1",
           "-m", str(tiny_model_dir), "-e", "hf", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 240
    while not (out.exists() and out.read_bytes().count(b"\n") >= 10) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # rows count as done once the manifest records them, after they are on disk
    done = json.loads((tmp_path / "out.jsonl.genrank.json").read_text())["progress"]["rows"]
    assert 9 <= done < 100 and out.read_bytes().count(b"\n") in (done, done + 1)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done:,} already done" in rerun.stderr

    reference = tmp_path / "reference.jsonl"
    score_file(src, reference, reranker, chunk_size=1)
    got, want = read_output(out), read_output(reference)
    assert [r["id"] for r in got] == list(range(100))
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w["score"], abs=1e-9) and "error" not in g


def test_summary_reads_well():
    s = BatchSummary(pairs=1200, failed=3, skipped=100, seconds=2.0)
    assert str(s) == "1,200 pairs scored, 3 failed, 100 already done in 2.0 s (600 pairs/s)"
    assert math.isclose(s.pairs_per_second, 600)


# -- resume: what a rerun may continue, and what it must leave alone -----------------------------


def snapshot(folder):
    """Every file (bytes) and folder under ``folder``, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def interrupted_output(src, out, hf_engine):
    """``out`` as a run killed while writing its third chunk of 2 rows leaves it: 4 rows done, a torn tail."""
    with pytest.raises(KeyboardInterrupt):
        score_file(src, out, Reranker(engine=FailingEngine(hf_engine, crash_on=3)), chunk_size=2)
    if out.suffix == ".parquet":
        (out.parent / "out.parquet.parts" / "part-000002.parquet.tmp").write_bytes(b"PAR1 torn")
    else:
        with open(out, "ab") as f:
            f.write(b'{"id": "p4", "score": 3.1' if out.suffix == ".jsonl" else b"p4,3.1")


REFUSALS = {  # reason -> (how the output and the rerun differ, what the refusal says)
    "foreign file": ("foreign", r"is not genrank output"),
    "no manifest": ("no manifest", r"has no manifest \(out\.\w+\.genrank\.json\): it was written by an older genrank"),
    "another input": (PAIRS[10:19], r"the input changed \(the output was written from .*in\.\w+'\): its size was"),
    "more rows than the input": (PAIRS[:3], r"the input changed .*: its size was"),
    "settings differ": ({"max_length": 512}, r"cannot be resumed by this run: --max-length was 1024, now 512\. Rerun"),
}


@pytest.mark.parametrize("reason", list(REFUSALS))
@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_a_refused_resume_changes_nothing_on_disk(tmp_path, hf_engine, ext, reason):
    src = write_input(tmp_path / f"in{ext}", PAIRS[:9])
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / f"out{ext}"
    change, message = REFUSALS[reason]
    reranker = Reranker(engine=hf_engine)
    if change == "foreign":
        write_input(out, [{"x": 1, "y": "not scores"}, {"x": 2, "y": "{"}])
    else:
        interrupted_output(src, out, hf_engine)
    if change == "no manifest":  # as an older genrank leaves it
        (tmp_path / "out" / f"out{ext}.genrank.json").unlink(missing_ok=True)  # (HEAD: none to remove)
    elif isinstance(change, list):
        src = write_input(tmp_path / f"other{ext}", change)
    elif isinstance(change, dict):
        reranker = Reranker(engine=hf_engine, **change)
    before = snapshot(tmp_path / "out")
    with pytest.raises(ValueError) as refusal:
        score_file(src, out, reranker, chunk_size=2)
    assert snapshot(tmp_path / "out") == before
    assert re.search(message, str(refusal.value))


def test_an_input_without_ids_is_checked_too(tmp_path, reranker):
    """Row numbers stand in for ids, so any input of as many rows has the same ids: the input itself is checked."""
    out = tmp_path / "out.jsonl"
    score_file(write_input(tmp_path / "a.jsonl", [{"query": p["query"], "document": p["document"]} for p in PAIRS[:6]]),
               out, reranker)
    before = out.read_bytes()
    other = write_input(tmp_path / "b.jsonl", [{"query": p["query"], "document": p["document"]} for p in PAIRS[6:12]])
    with pytest.raises(ValueError, match="the input changed"):
        score_file(other, out, reranker)
    assert out.read_bytes() == before


class RenamedEngine(WrappedEngine):
    """The tiny model under another model name."""

    def __init__(self, engine):
        super().__init__(engine)
        self.model_name = "another/model"


class ScoredOtherwise(WrappedEngine):
    """The tiny model, reported as another engine kind or scoring method."""

    def __init__(self, engine, kind="hf", scoring_method="full_vocabulary"):
        super().__init__(engine)
        self.kind, self.scoring_method = kind, scoring_method


def edited(name):
    import dataclasses

    from genrank import load_template

    return dataclasses.replace(load_template(name), system="Rate 1-7 how well the text answers the query.")


SETTING_CHANGES = {  # (first run, rerun, the difference named)
    "model": ({}, {"engine": RenamedEngine}, r"--model was '.*tiny-qwen2', now 'another/model'"),
    "engine": ({}, {"engine": partial(ScoredOtherwise, kind="vllm", scoring_method="logprob_token_ids")},
               r"--engine was 'hf', now 'vllm'; the engine's scoring method was 'full_vocabulary', now 'logprob_token_ids'"),
    "scoring method": ({}, {"engine": partial(ScoredOtherwise, scoring_method="top_logprobs=20")},
                       r"the engine's scoring method was 'full_vocabulary', now 'top_logprobs=20'"),
    "template": ({}, {"template": "lb-reranker-v1-instruct"},
                 r"--template was 'lb-reranker-v1', now 'lb-reranker-v1-instruct'"),
    "template edited": ({}, {"template": edited("lb-reranker-v1")},
                        r"the template 'lb-reranker-v1' was edited \(content sha256 \w{12}\.\.\., now \w{12}\.\.\.\)"),
    "max length": ({"max_length": 512}, {}, r"--max-length was 512, now 1024"),
    "card formula": ({}, {"normalize": False}, r"label normalisation \(off with --card-formula\) was on, now off"),
    "instruction": ({"template": "lb-reranker-v1-instruct"},
                    {"template": "lb-reranker-v1-instruct", "instruction": "Find novels"},
                    r"--instruction was not set, now 'Find novels'"),
    "long documents": ({}, {"long_documents": "chunks"}, r"--long-documents was 'truncate', now 'chunks'"),
    "id field": ({}, {"id_field": "uid"}, r"--id-field was 'id', now 'uid'"),
    "documents field": ({}, {"documents_field": "docs"}, r"--documents-field was not set, now 'docs'"),
    "shard": ({"shard": (0, 2)}, {"shard": (1, 2)}, r"--shard was 0/2, now 1/2"),
    "chunk size of a shard": ({"shard": (0, 2)}, {"shard": (0, 2), "chunk_size": 3},
                              r"--chunk-size \(it decides a shard's rows\) was 2, now 3"),
}
RUN_OPTIONS = ("id_field", "documents_field", "shard", "chunk_size")


@pytest.mark.parametrize("change", list(SETTING_CHANGES))
def test_a_resume_with_other_settings_is_refused_naming_the_change(tmp_path, hf_engine, change):
    first, rerun, message = SETTING_CHANGES[change]
    src = write_input(tmp_path / "in.jsonl", [{**p, "docs": [p["document"]]} for p in PAIRS[:4]])
    out = tmp_path / "out.jsonl"

    def run(options):
        options = {"chunk_size": 2, **options}
        engine = options.pop("engine", lambda e: e)(hf_engine)
        reranker = Reranker(engine=engine, **{k: v for k, v in options.items() if k not in RUN_OPTIONS})
        return score_file(src, out, reranker, **{k: v for k, v in options.items() if k in RUN_OPTIONS})

    run(first)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=message):
        run(rerun)
    assert snapshot(tmp_path) == before
    same = first if "shard" in first else {**first, "chunk_size": 3}  # unsharded, any chunk size resumes
    assert run(same).pairs == 0


class StoppingEngine(WrappedEngine):
    """The tiny model behind an engine that takes several calls at once, like a remote one, and
    from its ``fail_on``-th call raises the error that stops a run (as the OpenAI driver does once
    the first requests were all rejected alike)."""

    SetupError = openai.BadRequestError  # what the OpenAI driver raises for a rejection every request gets

    def __init__(self, engine, fail_on, max_calls_in_flight=3):
        super().__init__(engine)
        self.fail_on, self.max_calls_in_flight = fail_on, max_calls_in_flight
        self.calls, self.lock = 0, threading.Lock()

    def label_logprobs(self, prompts, labels):
        with self.lock:  # the tiny model itself takes one call at a time
            self.calls += 1
            if self.calls >= self.fail_on:
                url = "http://127.0.0.1:9/v1/chat/completions"
                raise self.SetupError(f"HTTP 400 from {url}: 'logprobs' is not supported (the first 3 requests "
                                      "were all rejected so)", body=None,
                                      response=httpx.Response(400, request=httpx.Request("POST", url)))
            return self.inner.label_logprobs(prompts, labels)


def manifest_rows(out):
    return json.loads(out.with_name(out.name + ".genrank.json").read_text())["progress"]["rows"]


def rows_on_disk(out):
    if out.suffix == ".parquet":
        return sum(pq.ParquetFile(p).metadata.num_rows for p in (out.parent / f"{out.name}.parts").glob("*.parquet"))
    return out.read_bytes().count(b"\n") - (out.suffix == ".csv")


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_an_engine_that_stops_the_run_leaves_an_output_a_rerun_completes(tmp_path, hf_engine, ext):
    src = write_input(tmp_path / f"in{ext}", PAIRS[:20])
    clean = tmp_path / f"clean{ext}"
    score_file(src, clean, Reranker(engine=hf_engine), chunk_size=4)
    out = tmp_path / f"out{ext}"
    with pytest.raises(StoppingEngine.SetupError, match="HTTP 400"):
        score_file(src, out, Reranker(engine=StoppingEngine(hf_engine, fail_on=3)), chunk_size=4)
    done = manifest_rows(out)
    assert done % 4 == 0 and done < 20 and rows_on_disk(out) == done  # whole chunks, all of them recorded
    # another engine, one call at a time, continues it
    summary = score_file(src, out, Reranker(engine=hf_engine), chunk_size=4)
    assert (summary.skipped, summary.pairs) == (done, 20 - done)
    assert read_output(out) == read_output(clean)


def test_cli_stops_with_one_line_when_the_engine_stops_the_run(tmp_path, tiny_model_dir, hf_engine, monkeypatch,
                                                                capsys):
    import genrank.cli.score

    src = write_input(tmp_path / "in.jsonl", PAIRS[:12])
    args = ["score", str(src), "-o", str(tmp_path / "out.jsonl"), "--chunk-size", "2", "-m", str(tiny_model_dir),
            "-e", "hf", "-q"]
    with monkeypatch.context() as m:
        m.setattr(genrank.cli.score, "reranker_from_args",
                  lambda args: Reranker(engine=StoppingEngine(hf_engine, fail_on=3)))
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrank: error: HTTP 400 from http://127.0.0.1:9/v1/chat/completions: 'logprobs' is not")
    assert err.count("\n") == 1 and "rerun the same command to resume" in err
    done = manifest_rows(tmp_path / "out.jsonl")
    assert main(args) == 0
    assert f"{12 - done} pairs scored, 0 failed, {done} already done" in capsys.readouterr().err


class BuggyEngine(FailingEngine):
    """The tiny model, until its second call raises as a bug would."""

    def label_logprobs(self, prompts, labels):
        if self.calls == 1:
            raise IndexError("list index out of range")
        return super().label_logprobs(prompts, labels)


def test_cli_shows_an_unexpected_errors_traceback_and_keeps_the_rows(tmp_path, tiny_model_dir, hf_engine, monkeypatch,
                                                                      capsys):
    import genrank.cli.score

    src = write_input(tmp_path / "in.jsonl", PAIRS[:6])
    args = ["score", str(src), "-o", str(tmp_path / "out.jsonl"), "--chunk-size", "2", "-m", str(tiny_model_dir),
            "-e", "hf", "-q"]
    monkeypatch.setattr(genrank.cli.score, "reranker_from_args", lambda args: Reranker(engine=BuggyEngine(hf_engine)))
    with pytest.raises(IndexError):  # not a one-line "error": a bug must not look like the user's mistake
        main(args)
    assert "unexpected error" in capsys.readouterr().err and manifest_rows(tmp_path / "out.jsonl") == 2


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_overwrite_starts_over_once_the_first_chunk_is_scored(tmp_path, hf_engine, expected, ext):
    out = tmp_path / f"out{ext}"
    score_file(write_input(tmp_path / f"a{ext}", PAIRS[:6]), out, Reranker(engine=hf_engine), chunk_size=4)
    other = write_input(tmp_path / f"b{ext}", PAIRS[6:16])
    before = snapshot(tmp_path)
    with pytest.raises(StoppingEngine.SetupError):  # nothing scored yet: the old output stays
        score_file(other, out, Reranker(engine=StoppingEngine(hf_engine, fail_on=1)), chunk_size=4, overwrite=True)
    assert snapshot(tmp_path) == before
    summary = score_file(other, out, Reranker(engine=hf_engine), chunk_size=4, overwrite=True)
    assert (summary.pairs, summary.skipped) == (10, 0)
    assert_matches(read_output(out), expected, [p["id"] for p in PAIRS[6:16]])
    assert not (tmp_path / f"out{ext}.parts").exists() and manifest_rows(out) == 10


def test_cli_overwrite(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out.csv"
    args = ["-o", str(out), "-m", str(tiny_model_dir), "-e", "hf", "-q"]
    assert main(["score", str(write_input(tmp_path / "a.csv", PAIRS[:3])), *args]) == 0
    b = str(write_input(tmp_path / "b.csv", PAIRS[3:5]))
    assert main(["score", b, *args, "--max-length", "512"]) == 2
    assert "--max-length was 1024, now 512" in capsys.readouterr().err
    assert main(["score", b, *args, "--max-length", "512", "--overwrite"]) == 0
    assert [r["id"] for r in read_output(out)] == ["p3", "p4"]


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_a_chunk_written_but_not_recorded_is_redone_once(tmp_path, reranker, monkeypatch, ext):
    """Killed after a chunk reached the disk but before the manifest counted it."""
    from genrank.manifest import Manifest

    src = write_input(tmp_path / f"in{ext}", PAIRS[:10])
    clean = tmp_path / f"clean{ext}"
    score_file(src, clean, reranker, chunk_size=4)
    out = tmp_path / f"out{ext}"
    save = Manifest.save

    def killed_recording_the_second_chunk(self, path):
        if self.progress.rows == 8:
            raise KeyboardInterrupt("killed")
        save(self, path)

    with monkeypatch.context() as m:
        m.setattr(Manifest, "save", killed_recording_the_second_chunk)
        with pytest.raises(KeyboardInterrupt):
            score_file(src, out, reranker, chunk_size=4)
    assert (manifest_rows(out), rows_on_disk(out)) == (4, 8)
    summary = score_file(src, out, reranker, chunk_size=4)
    assert (summary.skipped, summary.pairs) == (4, 6)
    assert read_output(out) == read_output(clean)


def test_parquet_killed_before_recording_the_merge_is_complete_on_rerun(tmp_path, reranker, monkeypatch):
    from genrank.manifest import Manifest

    src = write_input(tmp_path / "in.parquet", PAIRS[:7])
    out = tmp_path / "out.parquet"
    save = Manifest.save

    def killed_recording_the_merge(self, path):
        if self.progress.merged:
            raise KeyboardInterrupt("killed")
        save(self, path)

    with monkeypatch.context() as m:
        m.setattr(Manifest, "save", killed_recording_the_merge)
        with pytest.raises(KeyboardInterrupt):
            score_file(src, out, reranker, chunk_size=3)
    assert out.exists() and (tmp_path / "out.parquet.parts").exists()
    merged = read_output(out)
    summary = score_file(src, out, reranker, chunk_size=3)
    assert (summary.skipped, summary.pairs) == (7, 0)
    assert read_output(out) == merged and len(merged) == 7 and not (tmp_path / "out.parquet.parts").exists()


def test_cli_ray_refuses_an_existing_output_folder(tmp_path, capsys):
    """Ray Data appends to a folder: a folder it cannot resume (no checkpoint, no manifest) is refused."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "1_000000_000000.parquet").write_bytes(b"earlier run")
    src = write_input(tmp_path / "in.parquet", PAIRS[:2])
    assert main(["score", str(src), "-o", str(tmp_path / "out"), "--ray", "-m", str(tmp_path / "no-model")]) == 2
    assert "has no manifest (out.genrank.json), so its settings and input cannot be checked" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["1_000000_000000.parquet"]


def test_score_help_gives_each_option_one_default_in_words(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    entries = re.split(r"\n  (?=-)", capsys.readouterr().out.split("options:")[1])[1:]  # one per option
    helps = {e.split()[0]: " ".join(e.split()).replace("lb- reranker", "lb-reranker") for e in entries}
    assert {"--output", "--overwrite", "--format", "--shard", "--num-cpus", "--model", "--max-length"} <= set(helps)
    for option, text in helps.items():
        if option != "-h,":
            assert text.count("(default:") + text.count("(required)") == 1, text
        assert "(default: None)" not in text, text
    assert "file format (default: from the input's extension)" in helps["--format"]
    assert "start over: remove an earlier OUTPUT, its parts and its manifest (default: resume" in helps["--overwrite"]


def test_a_run_started_in_process_is_not_resumed_through_a_server_of_the_same_model(tmp_path, hf_engine,
                                                                                     tiny_model_dir, vllm_url):
    """Engines may score the same settings differently, so a resume keeps the engine and its scoring method."""
    src = write_input(tmp_path / "in.jsonl", PAIRS[:12])
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        score_file(src, out, Reranker(engine=FailingEngine(hf_engine, crash_on=3)), chunk_size=4)
    before = snapshot(tmp_path)
    with Reranker(str(tiny_model_dir), engine="openai", base_url=vllm_url, api_key="none", concurrency=4,
                  tokenizer=str(tiny_model_dir)) as remote:
        with pytest.raises(ValueError, match=r"--engine was 'hf', now 'openai'; the engine's scoring method was "
                                             r"'full_vocabulary', now '"):
            score_file(src, out, remote, chunk_size=2)
    assert snapshot(tmp_path) == before


def test_a_manifest_that_does_not_record_the_engine_is_not_resumed(tmp_path, reranker):
    src = write_input(tmp_path / "in.jsonl", PAIRS[:4])
    out = tmp_path / "out.jsonl"
    score_file(src, out, reranker, chunk_size=2)
    path = out.with_name(out.name + ".genrank.json")
    data = json.loads(path.read_text())
    del data["settings"]["engine"], data["settings"]["scoring_method"]  # as an older genrank wrote it
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"--engine was not recorded \(an older genrank wrote the manifest\), now 'hf'"):
        score_file(src, out, reranker)

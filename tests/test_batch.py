import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY

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


class FailingEngine:
    """The tiny model, but documents containing "FAIL" get an engine error and call ``crash_on``
    (1-based) raises, as if the process died there."""

    prompt_format = "tokens"

    def __init__(self, engine, crash_on=None, error="server said no"):
        self.engine, self.crash_on, self.calls, self.error = engine, crash_on, 0, error

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def label_logprobs(self, prompts, labels):
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt("killed")
        out = self.engine.label_logprobs(prompts, labels)
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
    with pytest.raises(ValueError, match="does not continue"):
        score_file(write_input(tmp_path / "b.jsonl", PAIRS[3:9]), out, reranker)
    with pytest.raises(ValueError, match="more rows than this input"):
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


def test_csv_torn_inside_a_quoted_error_is_redone(tmp_path, hf_engine, expected):
    rows = [dict(p) for p in PAIRS[:6]]
    rows[1]["document"] += " FAIL"
    src = write_input(tmp_path / "in.csv", rows)
    out = tmp_path / "out.csv"
    failing = Reranker(engine=FailingEngine(hf_engine, error="server said:\nno"))  # quoted: it holds a newline
    score_file(src, out, failing, chunk_size=2)
    whole = out.read_bytes()
    out.write_bytes(whole[: whole.index(b'p1,,,"server said:\n') + len(b'p1,,,"server said:\n')])  # killed there
    score_file(src, out, failing, chunk_size=2)
    assert out.read_bytes() == whole


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
    done = out.read_bytes().count(b"\n")
    assert 10 <= done < 100

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

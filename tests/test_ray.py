"""Ray Data path on a local CPU cluster: same scores as the single-process run (several seconds: actors load the model)."""

import functools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY

from genrank import Reranker
from genrank.batch import score_file
from genrank.cli import main

ray = pytest.importorskip("ray")
from genrank.ray import score_files_ray

QUERIES = [SEED_QUERY, "Who wrote Moby-Dick?", "Which novels did Jane Austen write?"]


@pytest.fixture(scope="module")
def local_ray():
    # Ray 2.60 on 2 cores: a pipeline stalls at num_cpus=2; 4 logical CPUs and half a CPU per actor run
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def read_folder(path):
    """Rows of a Ray output folder (JSONL or Parquet files), by id."""
    if any(path.glob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
    else:
        rows = [json.loads(line) for f in sorted(path.glob("*.json*")) for line in f.read_text().splitlines()]
    return {r["id"]: r for r in rows}


def test_ray_gives_the_single_process_scores(local_ray, tmp_path, tiny_model_dir, hf_engine, capsys):
    pairs = [{"id": f"p{n}", "query": q, "document": d}
             for n, (q, d) in enumerate((q, d) for q in QUERIES for d in SEED_DOCUMENTS)]
    pairs.append({"id": "bad", "query": "q", "document": None})
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    score_file(src, tmp_path / "single.jsonl", Reranker(engine=hf_engine), chunk_size=8)
    single = {r["id"]: r for r in map(json.loads, (tmp_path / "single.jsonl").read_text().splitlines())}

    make = functools.partial(Reranker, str(tiny_model_dir), engine="hf", device="cpu")
    summary = score_files_ray(src, tmp_path / "out", make, batch_size=8, concurrency=2, num_cpus=0.5)
    assert (summary.pairs, summary.failed) == (19, 1)
    got = read_folder(tmp_path / "out")
    assert set(got) == set(single)
    for key, row in single.items():
        if key != "bad":
            assert got[key]["score"] == pytest.approx(row["score"], abs=1e-5) and got[key]["error"] is None
    assert got["bad"]["score"] is None
    assert got["bad"]["error"] == "id 'bad': field 'document' is null"  # Ray knows no line numbers

    # one query per row with a list of documents, Parquet in and out, from the command line
    src = tmp_path / "lists.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": n, "query": q, "docs": SEED_DOCUMENTS} for n, q in enumerate(QUERIES)]), src)
    assert main(["score", str(src), "-o", str(tmp_path / "lists"), "--ray", "--documents-field", "docs",
                 "--chunk-size", "2", "--num-cpus", "0.5", "-m", str(tiny_model_dir), "-e", "hf"]) == 0
    assert "18 pairs scored, 0 failed" in capsys.readouterr().err
    got = read_folder(tmp_path / "lists")
    flat = [s for n in range(3) for s in got[n]["score"]]
    assert flat == pytest.approx([single[f"p{n}"]["score"] for n in range(18)], abs=1e-5)


def test_ray_needs_an_id_column(local_ray, tmp_path, tiny_model_dir):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": "q", "document": "d"}) + "\n")
    with pytest.raises(ValueError, match="no column 'id'"):
        score_files_ray(src, tmp_path / "out", functools.partial(Reranker, str(tiny_model_dir), engine="hf"))

"""`genrank eval`: BEIR loading, BM25 first stage, reranking, trec_eval metrics checked by hand."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genrank import Engine, LabelLogprobs, Reranker
from genrank.cli import main
from genrank.evaluate import (bm25_run, compute_metrics, evaluate_reranker, load_beir, load_first_stage, read_trec_run,
                              write_trec_run)

BEIR = Path(__file__).parent / "data" / "beir-mini"
RUN = BEIR / "run.trec"
LOG2_3 = math.log2(3)  # discount at rank 2
LOG2_5 = math.log2(5)  # discount at rank 4


def test_load_beir_keeps_judged_queries_in_file_order():
    data = load_beir(BEIR)
    assert list(data.queries) == ["q1", "q2", "q3", "q4"]  # q0 has no judgements
    assert data.qrels["q1"] == {"d1": 2, "d2": 1}  # header line skipped
    assert data.corpus["d8"] == "Photosynthesis Plants turn light, water and carbon dioxide into sugar and oxygen."
    assert list(load_beir(BEIR, max_queries=2).queries) == ["q1", "q2"]
    assert set(load_beir(BEIR, doc_ids={"d1", "d9"}).corpus) == {"d1"}


def test_metrics_of_the_fixture_run_by_hand():
    # Linear gains, discount log2(rank + 1). Run: q1 d2(rel 1) d7 d1(rel 2); q2 d5 d6 d7 d3(rel 1) d1,
    # d4(rel 2) not retrieved; q3 d8(rel 1); q4 d6(1) d5(1). q3 and q4 are perfect (1.0 everywhere).
    idcg_q1 = 2 + 1 / LOG2_3  # ideal q1: d1 then d2; q2's ideal is the same gains: d4 then d3
    q1_ndcg3 = (1 + 0 + 2 / 2) / idcg_q1  # = 0.7601875
    q2_ndcg5 = (1 / LOG2_5) / idcg_q1  # = 0.1636975
    expected = {
        "NDCG@1": (1 / 2 + 0 + 1 + 1) / 4,  # 0.625
        "NDCG@3": (q1_ndcg3 + 0 + 1 + 1) / 4,  # 0.6900469
        "NDCG@5": (q1_ndcg3 + q2_ndcg5 + 1 + 1) / 4,  # 0.7309713
        "NDCG@10": (q1_ndcg3 + q2_ndcg5 + 1 + 1) / 4,
        "MRR@10": (1 + 1 / 4 + 1 + 1) / 4,  # 0.8125
        "Recall@100": (2 / 2 + 1 / 2 + 1 + 1) / 4,  # 0.875
        "Accuracy@3": (1 + 0 + 1 + 1) / 4,  # 0.75: q2's first relevant document is 4th
    }
    assert expected["NDCG@3"] == pytest.approx(0.6900469, abs=1e-7)
    assert expected["NDCG@5"] == pytest.approx(0.7309713, abs=1e-7)
    data = load_beir(BEIR)
    assert compute_metrics(data.qrels, read_trec_run(RUN)) == pytest.approx(expected)


def test_mrr_stops_at_10_and_missing_queries_count_zero():
    qrels = {"a": {"rel": 1}, "b": {"rel": 1}}
    run = {"a": [(f"x{i}", 0.0) for i in range(10)] + [("rel", 0.0)]}  # relevant 11th; "b" has no run
    metrics = compute_metrics(qrels, run)
    assert metrics["MRR@10"] == 0.0 and metrics["Recall@100"] == 0.5  # (1 + 0) / 2
    run["a"].insert(9, run["a"].pop())  # relevant 10th
    assert compute_metrics(qrels, run)["MRR@10"] == pytest.approx((1 / 10 + 0) / 2)


def test_trec_run_round_trip_orders_by_score(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 a 3 1.5 x\nq1 Q0 b 1 2.5 x\nq1 Q0 c 2 1.5 x\n\nq2 Q0 a 1 -inf x\n")
    run = read_trec_run(path)
    assert run == {"q1": [("b", 2.5), ("a", 1.5), ("c", 1.5)], "q2": [("a", -math.inf)]}  # ties keep file order
    write_trec_run(run, path, tag="t")
    assert path.read_text().splitlines()[:2] == ["q1 Q0 b 1 2.500000 t", "q1 Q0 a 2 1.500000 t"]
    assert read_trec_run(path) == run


@pytest.mark.parametrize("text, message", [("q1 Q0 a 1\n", "line 1: expected 'qid Q0 docid rank score tag'"),
                                           ("q1 Q0 a 1 1 x\nq1 Q0 a 2 0 x\n", "line 2: document 'a' appears twice")])
def test_bad_run_files_are_named(tmp_path, text, message):
    path = tmp_path / "run.trec"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_trec_run(path)


def test_bm25_returns_documents_sharing_a_term_best_first():
    data = load_beir(BEIR)
    run = bm25_run(data.corpus, data.queries, k=100)
    # stopwords go ("who", "is", "the", "of"): q2 matches "author" and "moby"/"dick" only in d3 and d4
    assert [d for d, _ in run["q2"]] == ["d4", "d3"]
    assert [d for d, _ in run["q4"]] == ["d6", "d5"]  # "novels", "jane", "austen"
    assert all(s > 0 for docs in run.values() for _, s in docs)
    assert [d for d, _ in bm25_run(data.corpus, data.queries, k=1)["q2"]] == ["d4"]


class LabelPerDocument(Engine):
    """A chat engine that answers one label per document text (all probability on it), or fails."""

    prompt_format = "chat"
    tokenizer = None

    def __init__(self, labels: dict[str, int], fail: set[str] = frozenset()):
        self.labels, self.fail = labels, fail

    def label_logprobs(self, prompts, labels):
        values = np.full((len(prompts), len(labels.texts)), -np.inf)
        errors = {}
        for i, doc in enumerate(prompts.documents):
            if doc in self.fail:
                errors[i] = "server said no"
            else:
                values[i, self.labels.get(doc, 1) - 1] = 0.0
        return LabelLogprobs(values, errors)


@pytest.fixture(scope="module")
def corpus():
    return load_beir(BEIR).corpus


def test_rerank_metrics_by_hand(corpus):
    engine = LabelPerDocument({corpus["d1"]: 7, corpus["d2"]: 6, corpus["d3"]: 5})
    result = evaluate_reranker(Reranker(engine=engine), BEIR, run_file=RUN)
    # Labels follow the document, whatever the query. Reranked: q1 d1(rel 2) d2(1) d7: ideal.
    # q2 d1(7) d3(5, rel 1), then label-1 ties in first-stage order d5 d6 d7; d4 (rel 2) still
    # missing. q3, q4 unchanged (perfect).
    assert [d for d, _ in result.run["q2"]] == ["d1", "d3", "d5", "d6", "d7"]
    q2_ndcg3 = (1 / LOG2_3) / (2 + 1 / LOG2_3)  # = 0.2398125
    assert result.reranked == pytest.approx({
        "NDCG@1": (1 + 0 + 1 + 1) / 4,  # 0.75
        "NDCG@3": (1 + q2_ndcg3 + 1 + 1) / 4,  # 0.8099531
        "NDCG@5": (1 + q2_ndcg3 + 1 + 1) / 4,
        "NDCG@10": (1 + q2_ndcg3 + 1 + 1) / 4,
        "MRR@10": (1 + 1 / 2 + 1 + 1) / 4,  # 0.875
        "Recall@100": 0.875, "Accuracy@3": 1.0,
    })
    assert result.reranked["NDCG@3"] == pytest.approx(0.8099531, abs=1e-7)
    assert result.first_stage["NDCG@1"] == 0.625 and result.pairs == 3 + 5 + 1 + 2 and not result.failures


def test_failed_pairs_stay_last_and_are_reported(corpus):
    engine = LabelPerDocument({corpus["d1"]: 7, corpus["d2"]: 6}, fail={corpus["d1"]})
    result = evaluate_reranker(Reranker(engine=engine), BEIR, run_file=RUN, top_k=3, max_queries=1)
    assert result.run == {"q1": [("d2", 6.0), ("d7", 1.0), ("d1", -math.inf)]}
    assert [(f.query_id, f.doc_id, f.error) for f in result.failures] == [("q1", "d1", "server said no")]
    assert result.reranked["NDCG@1"] == 0.5  # d2 (gain 1) first, ideal d1 (gain 2)


def test_eval_command_with_tiny_model(tiny_model_dir, hf_engine, tmp_path):
    out = tmp_path / "reranked.trec"
    proc = subprocess.run([sys.executable, "-m", "genrank.cli", "eval", str(BEIR), "--run", str(RUN),
                           "-m", str(tiny_model_dir), "-e", "hf", "--top-k", "4", "-o", str(out), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["queries"] == 4 and report["pairs"] == 3 + 4 + 1 + 2 and report["failed"] == []
    first, reranked = report["metrics"]["first_stage"], report["metrics"]["reranked"]
    assert first["ndcg@1"] == 0.625 and first["recall@100"] == reranked["recall@100"] == 0.875
    run = read_trec_run(out)
    data = load_beir(BEIR)
    assert {name.lower(): v for name, v in compute_metrics(data.qrels, run).items()} == pytest.approx(reranked)
    first_stage, reranker = read_trec_run(RUN), Reranker(engine=hf_engine)
    for qid, docs in run.items():  # same candidates, scored as the library scores them
        assert sorted(d for d, _ in docs) == sorted(d for d, _ in first_stage[qid][:4])
        scores = reranker.score([(data.queries[qid], data.corpus[d]) for d, _ in docs])
        assert [s for _, s in docs] == pytest.approx(scores.tolist(), abs=2e-6)


def test_eval_table_with_bm25(tiny_model_dir, capsys):
    assert main(["eval", str(BEIR), "-m", str(tiny_model_dir), "-e", "hf", "--max-queries", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NDCG@1", "NDCG@3", "NDCG@5", "NDCG@10", "MRR@10", "Recall@100", "Accuracy@3"]
    assert lines[1].startswith("BM25 (bm25s)") and lines[2].startswith("reranked")
    # BM25 finds d1 only for q1 (recall 1/2) and d4, d3 for q2 (recall 1): (0.5 + 1) / 2 = 75.00 %
    assert lines[1].split()[-2] == lines[2].split()[-2] == "75.00"
    assert lines[3].startswith("2 queries, top 100 candidates (3 pairs)")


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "-e", "hf"]) == 2
    assert "BEIR folder" in capsys.readouterr().err
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d99 1 1.0 x\n")
    assert main(["eval", str(BEIR), "--run", str(run), "-e", "hf"]) == 2
    err = capsys.readouterr().err
    assert "document 'd99' for query 'q1'" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="top_k must be a positive integer, got 0"):  # the CLI checks its own
        load_first_stage(BEIR, top_k=0)
    with pytest.raises(ValueError, match="max_queries must be a positive integer, got -1"):
        load_first_stage(BEIR, max_queries=-1)

"""Calibration: fitting on labels whose true P(relevant | score) is known, the file, the split, refusals, bad data,
and the calibrated value everywhere (Reranker, rank, serve, adapters, CLI)."""

from __future__ import annotations

import asyncio
import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY

pytest.importorskip("sklearn")
from genrank import Reranker
from genrank.calibration import Calibration, CalibrationError, CalibrationWarning, fitted_for, load_calibration
from genrank.calibration.data import from_beir, from_file
from genrank.calibration.run import calibrate
from genrank.calibration.fit import (ECE_BINS, expected_calibration_error, fit_calibration, queries_needed,
                                     split_by_query)
from genrank.cli import main

BEIR = Path(__file__).parent / "data" / "beir-mini"
WORDS = ("harper lee novel mockingbird pulitzer prize melville whale austen gatsby fitzgerald potter rowling "
         "wizard photosynthesis plants light sugar oxygen river mountain ocean city music physics history war "
         "peace author book chapter page story hero villain love death king queen garden rain snow").split()


@pytest.fixture(scope="module")
def reranker(hf_engine):
    return Reranker(engine=hf_engine)


@pytest.fixture(scope="module")
def scored(reranker):
    """300 distinct pairs (30 queries x 10 documents) and the tiny model's scores of them, scored once."""
    rng = np.random.default_rng(7)
    pairs = [(" ".join(rng.choice(WORDS, 4)), " ".join(rng.choice(WORDS, 25))) for _ in range(300)]
    details = reranker.score_details(pairs)
    assert not details.errors and np.ptp(details.score) > 2  # the scores spread over the label range
    return pairs, details.score


def synthetic(score: np.ndarray, truth, *, queries: int = 4000, per_query: int = 10, seed: int = 0):
    """Labelled pairs drawn from the scored ones: each label is 1 with probability truth(score)."""
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(score), queries * per_query)
    s = score[picked]
    labels = (rng.uniform(size=len(s)) < truth(s)).astype(int)
    query_ids = [f"q{n // per_query}" for n in range(len(s))]
    return s, labels, query_ids


def logistic_truth(s):
    return 1 / (1 + np.exp(-1.8 * (s - 5.2)))


def step_truth(s):
    return np.where(s < 4.5, 0.1, 0.75)


def relevance_of(s):
    return (s - 1) / 6  # lb-reranker-v1: labels 1..7


@pytest.mark.parametrize("truth, method", [(logistic_truth, None), (step_truth, "isotonic"), (logistic_truth, "platt")])
def test_fitted_probability_matches_the_true_rate_on_held_out_queries(reranker, scored, truth, method):
    s, labels, query_ids = synthetic(scored[1], truth)
    result = fit_calibration(s, relevance_of(s), labels, query_ids, fitted_for=fitted_for(reranker), method=method,
                             held_out=0.5)
    cal = result.calibration
    before, after = cal.metrics["before"], cal.metrics["after"]
    assert after["pairs"] == 20_000 and before["pairs"] == 20_000  # half of 4000 queries of 10 pairs held out
    assert after["ece"] <= 0.03 and after["ece"] < before["ece"]
    assert after["brier"] < before["brier"] and after["log_loss"] < before["log_loss"]
    if method is not None:
        assert cal.method == method
    else:  # chosen by the lower held-out log-loss
        candidates = cal.metrics["candidates"]
        assert candidates[cal.method]["log_loss"] == min(c["log_loss"] for c in candidates.values())
    # the map is close to the truth on the scores seen (the step's edge aside)
    grid = np.sort(scored[1])
    away = np.abs(grid - 4.5) > 0.3 if truth is step_truth else np.ones(len(grid), bool)
    assert np.max(np.abs(cal.probability(grid) - truth(grid))[away]) < 0.08
    # ECE is what the file says it is: equal-mass bins
    assert after["ece"] == pytest.approx(expected_calibration_error(result.held_out_probability,
                                                                    result.held_out_labels))
    assert str(ECE_BINS) in cal.metrics["ece_bins"] and "equal-mass" in cal.metrics["ece_bins"]


def test_isotonic_is_monotone_clipped_and_applies_like_scikit_learn(reranker, scored):
    from sklearn.isotonic import IsotonicRegression

    s, labels, query_ids = synthetic(scored[1], step_truth, queries=500)
    cal = fit_calibration(s, relevance_of(s), labels, query_ids, fitted_for=fitted_for(reranker),
                          method="isotonic").calibration
    grid = np.linspace(-10, 20, 2001)
    p = cal.probability(grid)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    fit = ~split_by_query(query_ids, 0.3, 0)
    sk = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(s[fit], labels[fit])
    np.testing.assert_allclose(p, sk.predict(grid), atol=1e-12)
    assert np.isnan(cal.probability([np.nan])[0])  # a failed pair stays failed


def test_split_is_by_query_seeded_and_says_how_many_queries_it_needs():
    query_ids = [f"q{n % 37}" for n in range(370)]  # queries interleaved
    held = split_by_query(query_ids, 0.3, seed=1)
    by_query = {}
    for q, h in zip(query_ids, held):
        by_query.setdefault(q, set()).add(bool(h))
    assert all(len(sides) == 1 for sides in by_query.values())  # no query on both sides
    assert sum(sides == {True} for sides in by_query.values()) == 12  # ceil(0.3 * 37)
    assert np.array_equal(held, split_by_query(query_ids, 0.3, seed=1))
    assert not np.array_equal(held, split_by_query(query_ids, 0.3, seed=2))
    assert queries_needed(0.3) == 2 and queries_needed(0.9) == 10
    with pytest.raises(ValueError, match="1 query with labelled pairs cannot be split.*at least 2 queries"):
        split_by_query(["a", "a"], 0.3)
    with pytest.raises(ValueError, match="5 queries.*--held-out 0.9: that needs at least 10 queries"):
        split_by_query(list("abcde"), 0.9)


def test_the_fit_part_needs_relevant_and_not_relevant_pairs(reranker):
    s = np.linspace(1, 7, 100)
    query_ids = [f"q{n // 10}" for n in range(100)]
    for labels, missing in ((np.zeros(100, int), "no relevant pairs"), (np.ones(100, int), "no not-relevant pairs")):
        with pytest.raises(ValueError, match=f"the fit part \\(70 pairs of 7 queries\\) has {missing}"):
            fit_calibration(s, relevance_of(s), labels, query_ids, fitted_for=fitted_for(reranker))


def test_the_file_round_trips(reranker, scored, tmp_path):
    s, labels, query_ids = synthetic(scored[1], logistic_truth, queries=300)
    for method in ("platt", "isotonic"):
        cal = fit_calibration(s, relevance_of(s), labels, query_ids, fitted_for=fitted_for(reranker), method=method,
                              data={"kind": "test"}).calibration
        path = tmp_path / f"{method}.json"
        cal.save(path)
        back = Calibration.load(path)
        assert back == cal and back.source == str(path)
        np.testing.assert_array_equal(back.probability(scored[1]), cal.probability(scored[1]))
        raw = json.loads(path.read_text())
        assert raw["format"] == "genrank-calibration" and raw["input"] == "score"
        assert raw["fitted_for"]["template"]["name"] == "lb-reranker-v1" and raw["fitted_for"]["max_length"] == 1024
        assert raw["data"]["split"]["fit"]["queries"] + raw["data"]["split"]["held_out"]["queries"] == 300
        assert set(raw["metrics"]["before"]) >= {"ece", "brier", "log_loss", "pairs", "positives"}
    (tmp_path / "bad.json").write_text('{"format": "genrank-calibration", "version": 1, "method": "isotonic", '
                                       '"parameters": {"x": [2, 1], "y": [0, 1]}, "fitted_for": {}}')
    with pytest.raises(CalibrationError, match="bad isotonic parameters"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CalibrationError, match="not a genrank calibration"):
        Calibration.load(tmp_path / "other.json")


def platt_for(reranker: Reranker, **changes) -> Calibration:
    return Calibration("platt", {"slope": 1.5, "intercept": -6.0}, {**fitted_for(reranker), **changes})


def test_reranker_adds_probability_and_rank_drops_below_thresholds(hf_engine, reranker, tmp_path):
    path = tmp_path / "CALIB.json"
    cal = platt_for(reranker)
    cal.save(path)
    calibrated = Reranker(engine=hf_engine, calibration=str(path))
    details = calibrated.score_details([(SEED_QUERY, d) for d in SEED_DOCUMENTS])
    np.testing.assert_allclose(details.probability, cal.probability(details.score))
    assert reranker.score_details([(SEED_QUERY, "x")]).probability is None
    ranked = calibrated.rank(SEED_QUERY, SEED_DOCUMENTS)
    assert [r["corpus_id"] for r in ranked] == [r["corpus_id"] for r in reranker.rank(SEED_QUERY, SEED_DOCUMENTS)]
    assert all(r["probability"] == pytest.approx(details.probability[r["corpus_id"]]) for r in ranked)
    floor = float(np.median(details.probability))
    kept = calibrated.rank(SEED_QUERY, SEED_DOCUMENTS, min_probability=floor)
    assert {r["corpus_id"] for r in kept} == set(np.flatnonzero(details.probability >= floor).tolist())
    relevance_floor = float(np.median(details.relevance))
    kept = reranker.rank(SEED_QUERY, SEED_DOCUMENTS, min_relevance=relevance_floor, top_k=2)
    assert [r["corpus_id"] for r in kept] == [i for i in np.argsort(-details.score, kind="stable")
                                              if details.relevance[i] >= relevance_floor][:2]
    assert asyncio.run(calibrated.arank(SEED_QUERY, SEED_DOCUMENTS, min_probability=floor)) == \
        calibrated.rank(SEED_QUERY, SEED_DOCUMENTS, min_probability=floor)
    with pytest.raises(ValueError, match="min_probability needs a calibration"):
        reranker.rank(SEED_QUERY, SEED_DOCUMENTS, min_probability=0.5)
    with pytest.raises(ValueError, match="min_relevance must be a number from 0 to 1, got 2"):
        reranker.rank(SEED_QUERY, SEED_DOCUMENTS, min_relevance=2)


@pytest.mark.parametrize("changes, options, message", [
    ({"template": {"name": "qwen3-reranker", "sha256": "0" * 64}}, {},
     "was fitted for template 'qwen3-reranker', this Reranker uses 'lb-reranker-v1'"),
    ({"template": {"name": "lb-reranker-v1", "sha256": "0" * 64}}, {}, "content sha256 000000000000.*was edited"),
    ({"normalize": False}, {}, "fitted with label normalisation off .*this Reranker has on"),
    ({}, {"long_documents": "chunks"}, "fitted with long_documents 'truncate', this Reranker has 'chunks'"),
    ({}, {"normalize": False}, "fitted with label normalisation on, this Reranker has off"),
    ({"model": "someone/other-model"}, {}, "fitted for model 'someone/other-model', this Reranker runs '.*tiny-qwen2'"
                                           ".*--allow-other-model"),
])
def test_a_calibration_for_other_settings_is_refused_naming_both(hf_engine, reranker, changes, options, message):
    with pytest.raises(CalibrationError, match=message) as refused:
        Reranker(engine=hf_engine, calibration=platt_for(reranker, **changes), **options)
    assert "\n" not in str(refused.value)


def test_other_settings_are_refused_before_the_model_loads(reranker, tmp_path):
    with pytest.raises(CalibrationError, match="label normalisation"):  # not "model not found"
        Reranker(str(tmp_path / "no-model"), engine="hf", calibration=platt_for(reranker, normalize=False))


def test_another_model_is_allowed_on_request_and_another_max_length_warns(hf_engine, reranker):
    cal = platt_for(reranker, model="someone/other-model")
    assert Reranker(engine=hf_engine, calibration=cal, allow_other_model=True).calibration is cal
    with pytest.warns(CalibrationWarning, match="max_length 1024, this Reranker has 512"):
        Reranker(engine=hf_engine, calibration=platt_for(reranker), max_length=512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Reranker(engine=hf_engine, calibration=platt_for(reranker))


# -- labelled data --------------------------------------------------------------------------


def test_beir_pairs_judged_graded_and_unjudged_as_not_relevant():
    pairs = from_beir(BEIR, run_file=BEIR / "run.trec", top_k=3)
    got = {(q, d[:12]): (label, grade) for q, d, label, grade in zip(pairs.query_ids, pairs.documents, pairs.labels,
                                                                     pairs.grades)}
    # run (top 3): q1 d2 d7 d1; q2 d5 d6 d7 (+ judged d3, d4); q3 d8; q4 d6 d5. qrels: q1 d1=2 d2=1, q2 d3=1 d4=2 ...
    assert len(pairs) == 3 + 3 + 2 + 1 + 2 and pairs.query_ids[:3] == ["q1"] * 3
    assert sorted(pairs.grades[:3], key=str) == [1.0, 2.0, None]
    assert pairs.labels.sum() == 7 and sum(g is None for g in pairs.grades) == 4  # unjudged: d7 (q1), d5 d6 d7 (q2)
    assert from_beir(BEIR, run_file=BEIR / "run.trec", top_k=3, relevant_grade=2).labels.sum() == 2
    judged = from_beir(BEIR, judged_only=True)
    assert len(judged) == 7 and all(g is not None for g in judged.grades) and judged.source["first_stage"] is None
    assert got and pairs.fingerprint() == from_beir(BEIR, run_file=BEIR / "run.trec", top_k=3).fingerprint()
    bm25 = from_beir(BEIR)  # BM25 finds q2's judged d4 d3 only: every judged pair is there, and no unjudged one
    assert bm25.source["first_stage"] == "bm25" and sorted(bm25.grades) == sorted(judged.grades)


def test_a_beir_folder_without_qrels_is_named(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "dev.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(ValueError, match="has no qrels/test.tsv: calibration needs relevance judgements; it has "
                                         "qrels for dev"):
        from_beir(tmp_path)


def test_labelled_files_and_labels_that_are_not_numbers(tmp_path):
    rows = [{"query": "q a", "document": "d1", "label": 1}, {"query": "q a", "document": "d2", "label": 0},
            {"query": "q b", "document": "d3", "label": 3}]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = from_file(jsonl, relevant_grade=2)
    assert pairs.labels.tolist() == [0, 0, 1] and pairs.query_ids == ["q a", "q a", "q b"]
    assert from_file(jsonl).labels.tolist() == [1, 0, 1]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["query", "document", "label"])
        writer.writeheader()
        writer.writerows(rows)
    assert from_file(tmp_path / "pairs.csv").labels.tolist() == [1, 0, 1]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{**r, "qid": n // 2} for n, r in enumerate(rows)]), tmp_path / "p.parquet")
    parquet = from_file(tmp_path / "p.parquet", query_id_field="qid")
    assert parquet.labels.tolist() == [1, 0, 1] and parquet.query_ids == ["0", "0", "1"]
    (tmp_path / "bad.csv").write_text("query,document,label\nq,d,1\nq,d2,yes\n")
    with pytest.raises(ValueError, match="bad.csv' line 3: field 'label' must be a number .*got 'yes'"):
        from_file(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text('{"query": "q", "document": "d", "label": null}\n')
    with pytest.raises(ValueError, match="line 1: field 'label' must be a number"):
        from_file(tmp_path / "bad.jsonl")
    (tmp_path / "nolabel.csv").write_text("query,document\nq,d\n")
    with pytest.raises(ValueError, match="has no column 'label'"):
        from_file(tmp_path / "nolabel.csv")


# -- the command ----------------------------------------------------------------------------


def test_calibrate_command_on_the_beir_fixture(tiny_model_dir, reranker, tmp_path, capsys):
    out = tmp_path / "CALIB.json"
    argv = ["calibrate", str(BEIR), "--run", str(BEIR / "run.trec"), "-m", str(tiny_model_dir), "-e", "hf",
            "-o", str(out), "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "ECE (15 bins)" in printed.out and "relevance (uncalibrated)" in printed.out
    assert "log-loss" in printed.out and "held out" in printed.out
    assert "warning: the fit part has" in printed.err  # 12 pairs: the user is told it is rough
    assert (tmp_path / "CALIB.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cal = load_calibration(out)
    assert cal.data["kind"] == "beir" and cal.data["pairs"] == 12 and cal.data["relevant"] == "qrels grade >= 1"
    assert cal.fitted_for["model"] == str(tiny_model_dir.resolve())
    scores = tmp_path / "CALIB.scores.jsonl"
    assert len(scores.read_text().splitlines()) == 12 and (tmp_path / "CALIB.scores.jsonl.genrank.json").exists()
    before = scores.read_bytes()
    assert main([*argv, "--method", "isotonic", "--plot", str(tmp_path / "other.png")]) == 0
    assert scores.read_bytes() == before and load_calibration(out).method == "isotonic"
    assert (tmp_path / "other.png").exists()
    run = calibrate(reranker, from_beir(BEIR, run_file=BEIR / "run.trec"), out)  # the same pairs and model
    assert run.scoring.skipped == 12 and run.scoring.pairs == 0  # resumed: nothing scored again
    files = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="holds the scores of other pairs"):
        calibrate(reranker, from_beir(BEIR, run_file=BEIR / "run.trec", top_k=2), out)
    with pytest.raises(ValueError, match="--max-length was 1024, now 512"):
        calibrate(Reranker(engine=reranker.engine, max_length=512), from_beir(BEIR, run_file=BEIR / "run.trec"), out)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == files  # refusals change nothing


@pytest.mark.parametrize("extra, message", [
    (["--held-out", "0.9"], "4 queries .* that needs at least 10 queries"),
    (["--relevant-grade", "3"], "the fit part .* has no relevant pairs"),
])
def test_calibrate_command_stops_on_bad_data_before_the_model_loads(tmp_path, capsys, extra, message):
    argv = ["calibrate", str(BEIR), "--run", str(BEIR / "run.trec"), "-m", str(tmp_path / "no-model"), "-e", "hf",
            "-o", str(tmp_path / "CALIB.json"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrank: error:") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err)
    assert list(tmp_path.iterdir()) == []  # nothing written


# -- the calibrated value everywhere ----------------------------------------------------------


@pytest.fixture(scope="module")
def calib_path(reranker, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "CALIB.json"
    platt_for(reranker).save(path)
    return path


@pytest.fixture(scope="module")
def calibrated(hf_engine, calib_path):
    return Reranker(engine=hf_engine, calibration=calib_path)


def test_serve_reports_the_calibrated_probability(calibrated):
    pytest.importorskip("fastapi")
    import httpx

    from genrank.serve import create_app

    want = calibrated.score_details([(SEED_QUERY, d) for d in SEED_DOCUMENTS])
    floor = float(np.median(want.probability))

    async def run(app):
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
                for _ in range(3000):
                    if (await client.get("/health")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                return [await client.post("/v2/rerank", json={"query": SEED_QUERY, "documents": SEED_DOCUMENTS}),
                        await client.post("/v1/rerank", json={"query": SEED_QUERY, "documents": SEED_DOCUMENTS,
                                                              "min_relevance": floor}),
                        await client.post("/rerank", json={"query": SEED_QUERY, "texts": SEED_DOCUMENTS,
                                                           "min_relevance": floor}),
                        await client.post("/v2/rerank", json={"query": SEED_QUERY, "documents": ["a"],
                                                              "min_relevance": 1.5})]

    full, kept, tei, bad = asyncio.run(run(create_app(calibrated)))
    results = full.json()["results"]
    assert [r["index"] for r in results] == [r["corpus_id"] for r in calibrated.rank(SEED_QUERY, SEED_DOCUMENTS)]
    for r in results:
        i = r["index"]
        assert r["relevance_score"] == pytest.approx(want.probability[i])
        assert r["genrank"]["relevance"] == pytest.approx(want.relevance[i])
        assert r["genrank"]["score"] == pytest.approx(want.score[i])
    above = {int(i) for i in np.flatnonzero(want.probability >= floor)}
    assert {r["index"] for r in kept.json()["results"]} == above
    assert {r["index"] for r in tei.json()} == above
    assert all(r["score"] == pytest.approx(want.probability[r["index"]]) for r in tei.json())
    assert bad.status_code == 422 and bad.json()["field"] == "min_relevance"


def test_langchain_adapter_reports_calibrated_values(reranker, calibrated, calib_path):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from genrank.integrations.langchain import GenrankRerank

    want = calibrated.score_details([(SEED_QUERY, d) for d in SEED_DOCUMENTS])
    floor = float(np.median(want.probability))
    docs = [Document(page_content=d) for d in SEED_DOCUMENTS]
    for compressor in (GenrankRerank(reranker=reranker, calibration=str(calib_path), top_n=None, min_relevance=floor),
                       GenrankRerank(reranker=calibrated, top_n=None, min_relevance=floor)):
        out = compressor.compress_documents(docs, SEED_QUERY)
        assert len(out) == int((want.probability >= floor).sum())
        for d in out:
            i = SEED_DOCUMENTS.index(d.page_content)
            assert d.metadata["relevance_score"] == pytest.approx(want.probability[i])
            assert d.metadata["genrank_relevance"] == pytest.approx(want.relevance[i])
    with pytest.raises(ValueError, match="fitted for model 'someone/other-model'"):  # pydantic's ValidationError
        GenrankRerank(reranker=reranker, calibration=platt_for(reranker, model="someone/other-model"))


def test_llama_index_adapter_reports_calibrated_values(reranker, calib_path, calibrated):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from genrank.integrations.llama_index import GenrankRerank

    want = calibrated.score_details([(SEED_QUERY, d) for d in SEED_DOCUMENTS])
    floor = float(np.median(want.probability))
    nodes = [NodeWithScore(node=TextNode(text=d)) for d in SEED_DOCUMENTS]
    post = GenrankRerank(reranker, top_n=6, calibration=calib_path, min_relevance=floor)
    out = post.postprocess_nodes(nodes, query_str=SEED_QUERY)
    assert len(out) == int((want.probability >= floor).sum())
    for n in out:
        i = SEED_DOCUMENTS.index(n.node.text)
        assert n.score == pytest.approx(want.probability[i])
        assert n.node.metadata["genrank_relevance"] == pytest.approx(want.relevance[i])


def test_haystack_adapter_reports_calibrated_values(tiny_model_dir, calib_path, calibrated):
    pytest.importorskip("haystack")
    from haystack import Document

    from genrank.integrations.haystack import GenrankRanker

    want = calibrated.score_details([(SEED_QUERY, d) for d in SEED_DOCUMENTS])
    floor = float(np.median(want.probability))
    ranker = GenrankRanker(str(tiny_model_dir), engine="hf", engine_options={"device": "cpu"},
                           calibration=str(calib_path), score_threshold=floor)  # Haystack's min_relevance
    assert GenrankRanker.from_dict(ranker.to_dict()).calibration == str(calib_path)
    out = ranker.run(SEED_QUERY, [Document(content=d) for d in SEED_DOCUMENTS])["documents"]
    assert len(out) == int((want.probability >= floor).sum())
    for d in out:
        i = SEED_DOCUMENTS.index(d.content)
        assert d.score == pytest.approx(want.probability[i], abs=1e-6)
        assert d.meta["genrank_relevance"] == pytest.approx(want.relevance[i], abs=1e-6)


def test_cli_score_and_rank_add_a_probability_column(tiny_model_dir, calib_path, calibrated, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "document"])
        writer.writerows((SEED_QUERY, d) for d in SEED_DOCUMENTS)
    want = calibrated.score_details([(SEED_QUERY, d) for d in SEED_DOCUMENTS])
    model = ["-m", str(tiny_model_dir), "-e", "hf"]
    out = tmp_path / "scores.csv"
    assert main(["score", str(pairs), "-o", str(out), "-q", *model, "--calibration", str(calib_path)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "score", "label_mass", "probability", "error"]
    np.testing.assert_allclose([float(r["probability"]) for r in rows], want.probability, atol=1e-9)
    other = tmp_path / "other.json"
    Calibration("platt", {"slope": 1.0, "intercept": 0.0}, calibrated.calibration.fitted_for).save(other)
    assert main(["score", str(pairs), "-o", str(out), "-q", *model, "--calibration", str(other)]) == 2
    assert "--calibration was" in capsys.readouterr().err  # a resumed output never mixes two calibrations
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(SEED_DOCUMENTS) + "\n")
    assert main(["rank", SEED_QUERY, "-d", str(docs), "--json", *model, "--calibration", str(calib_path)]) == 0
    ranked = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["probability"] for r in ranked] == pytest.approx([want.probability[r["corpus_id"]] for r in ranked])

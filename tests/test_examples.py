"""Every script in examples/ runs with the tiny model, so none of them can rot."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> list[str]:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_two_stage_retrieval(tiny_model_dir):
    lines = run_example("two_stage_retrieval.py", "--model", str(tiny_model_dir), "--engine", "hf")
    dense = lines[lines.index("Dense retrieval (all-MiniLM-L6-v2):") + 1:][:10]
    reranked = lines[lines.index("Reranked with genrank:") + 1:]
    # the tutorial's first stage: the journalist first, Jeanne d'Arc 10th
    assert dense[0].startswith("  1. A world-weary political journalist")
    assert dense[9].startswith(" 10. In 1431, Jeanne d'Arc")
    assert len(reranked) == 10
    assert sorted(r.split("] ", 1)[1] for r in reranked) == sorted(d.split(". ", 1)[1] for d in dense)


def test_batch_parquet(tiny_model_dir, hf_engine, tmp_path):
    import pyarrow.parquet as pq

    from genrank import Reranker

    out = tmp_path / "scores.parquet"
    args = ("--model", str(tiny_model_dir), "--engine", "hf", "--output", str(out), "--chunk-size", "5")
    lines = run_example("batch_parquet.py", *args)
    assert lines[0].startswith("12 pairs scored, 0 failed")
    pairs, scores = pq.read_table(tmp_path / "pairs.parquet").to_pylist(), pq.read_table(out).to_pylist()
    assert [r["id"] for r in scores] == [f"pair-{i}" for i in range(12)] and all(r["error"] is None for r in scores)
    expected = Reranker(engine=hf_engine).score([(p["query"], p["document"]) for p in pairs])
    assert [r["score"] for r in scores] == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_existing_vllm(tiny_model_dir):
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    lines = run_example("existing_vllm.py", "--model", str(tiny_model_dir), "--dtype", "float32",
                        "--max-model-len", "1024", "--enforce-eager", env=env)
    documents = (EXAMPLES / "data" / "mockingbird.txt").read_text().splitlines()
    lines = lines[lines.index("Query: Who wrote 'To Kill a Mockingbird'?") + 1:]  # vLLM logs to stdout too
    results = [line for line in lines if line.startswith("[")]
    assert len(results) == 3 and all(line.split("] ", 1)[1] in documents for line in results)


def check_framework_example(lines: list[str], first_stage: str, reranker, top_n: int = 3) -> None:
    """The reranked section is ``Reranker.rank`` of the first stage's candidates, with relevance scores."""
    start = lines.index(first_stage) + 1
    candidates = [line.split(". ", 1)[1] for line in lines[start:lines.index("", start)]]
    start = lines.index(f"Reranked with genrank (top {top_n}):") + 1
    reranked = [line.split("] ", 1) for line in lines[start:start + top_n]]
    query = lines[0].removeprefix("Query: ")
    details = reranker.score_details([(query, c) for c in candidates])
    want = reranker.rank(query, candidates, top_k=top_n)
    assert len(candidates) == 4 and [text for _, text in reranked] == [candidates[w["corpus_id"]] for w in want]
    assert [float(score.split("[")[1]) for score, _ in reranked] == \
        pytest.approx([details.relevance[w["corpus_id"]] for w in want], abs=5e-4)


def test_langchain_retriever(tiny_model_dir, hf_engine):
    from genrank import Reranker

    lines = run_example("langchain_retriever.py", "--model", str(tiny_model_dir), "--engine", "hf")
    check_framework_example(lines, "Dense retrieval (all-MiniLM-L6-v2):", Reranker(engine=hf_engine))


def test_llama_index_postprocessor(tiny_model_dir, hf_engine):
    from genrank import Reranker

    lines = run_example("llama_index_postprocessor.py", "--model", str(tiny_model_dir), "--engine", "hf")
    check_framework_example(lines, "Dense retrieval (all-MiniLM-L6-v2):", Reranker(engine=hf_engine))


def test_haystack_pipeline(tiny_model_dir, hf_engine, tmp_path):
    from genrank import Reranker

    yaml = tmp_path / "pipeline.yaml"
    lines = run_example("haystack_pipeline.py", "--model", str(tiny_model_dir), "--engine", "hf", "--yaml", str(yaml))
    check_framework_example(lines, "BM25 retrieval:", Reranker(engine=hf_engine))
    assert lines[-1] == f"Saved to {yaml}, loaded and run again: same ranking"
    assert "genrank.integrations.haystack.GenrankRanker" in yaml.read_text()

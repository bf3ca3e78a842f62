import json
import re
import subprocess
import sys

import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY

from genrank.cli import main


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "docs.txt"
    path.write_text("\n".join(SEED_DOCUMENTS) + "\n")
    return path


def test_rank_table_end_to_end(tiny_model_dir, docs_file):
    out = subprocess.run([sys.executable, "-m", "genrank.cli", "rank", SEED_QUERY, "--docs", str(docs_file),
                          "--model", str(tiny_model_dir), "--engine", "hf", "--top-k", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "id", "document"]
    assert len(lines) == 4 and lines[1].split()[0] == "1"


def test_rank_json_lines(tiny_model_dir, docs_file, capsys):
    assert main(["rank", SEED_QUERY, "--docs", str(docs_file), "-m", str(tiny_model_dir), "-e", "hf", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6 and {r["corpus_id"] for r in rows} == set(range(6))
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(r["text"] == SEED_DOCUMENTS[r["corpus_id"]] for r in rows)


def test_templates_command(capsys):
    assert main(["templates"]) == 0
    out = capsys.readouterr().out
    for name in ("lb-reranker-v1", "qwen3-reranker", "mxbai-rerank-v2", "bge-reranker-v2-gemma"):
        assert name in out
    assert "score: logit (real (logit)), relevance: sigmoid(score)" in out
    assert "mixedbread-ai/mxbai-rerank-base-v2, mixedbread-ai/mxbai-rerank-large-v2" in out
    assert main(["templates", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["mxbai-rerank-v2"]["score"] == "log_odds" and rows["qwen3-reranker"]["scale"] == "0 to 1"
    assert "Qwen/Qwen3-Reranker-0.6B" in rows["qwen3-reranker"]["models"]


@pytest.mark.parametrize("command", [["--help"], ["rank", "--help"], ["templates", "--help"]])
def test_help_shows_options_with_defaults(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(command)
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    if command[0] == "rank":
        assert "documents are cut to fit (default: the recipe's, else 1024)" in out
        assert "else lb-reranker-v1; see genrank templates)" in out.replace("lb- ", "lb-") and "(default: auto)" in out


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["rank", "q", "--docs", str(tmp_path / "missing.txt"), "-e", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrank: error: --docs: cannot read") and "Traceback" not in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{"text": 3}\n')
    assert main(["rank", "q", "--docs", str(bad), "-e", "hf"]) == 2
    assert "document 2" in capsys.readouterr().err


def test_unknown_engine_is_a_one_line_error(docs_file, capsys):
    assert main(["rank", "q", "--docs", str(docs_file), "-e", "nope"]) == 2
    assert capsys.readouterr().err.startswith("genrank: error: unknown engine 'nope'; choose one of: auto, hf,")


@pytest.mark.parametrize("command", ["rank", "eval", "serve"])
def test_each_option_shows_one_default_in_words(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("(default:") == out.count("(default: ") and "(default: None)" not in out
    if command == "rank":
        assert "show only the best K (default: all)" in out and "- for standard input (required)" in out


@pytest.mark.parametrize(("module", "command", "extra"), [
    ("pytrec_eval", ["eval", "{tmp}"], "eval"),
    ("ray", ["score", "{tmp}", "-o", "{tmp}/out.jsonl", "--ray"], "ray"),
])
def test_a_missing_extra_names_its_install_line(module, command, extra, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    assert main([arg.format(tmp=tmp_path) for arg in command]) == 2
    err = capsys.readouterr().err
    assert err == (f"genrank: error: this command needs {module}, which is not installed; "
                   f"install it with: pip install 'genrank[{extra}]'\n")


def test_docs_files_split_on_newlines_only(tmp_path, tiny_model_dir, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text("page one\x0cpage two of doc A\r\ndoc B\u2028still B\n", encoding="utf-8")
    assert main(["rank", "q", "--docs", str(docs), "-m", str(tiny_model_dir), "-e", "hf", "--json"]) == 0
    texts = {json.loads(line)["text"] for line in capsys.readouterr().out.split("\n") if line}
    assert texts == {"page one\x0cpage two of doc A", "doc B\u2028still B"}


def test_bad_docs_json_and_engine_args_are_one_line_errors(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('["a", ')
    assert main(["rank", "q", "--docs", str(bad), "-e", "hf"]) == 2
    assert capsys.readouterr().err.startswith(f"genrank: error: --docs: {str(bad)!r} is not JSON")
    docs = tmp_path / "docs.txt"
    docs.write_text("a\n")
    for arg, says in [("template=x", "use --template instead"), ("max_length=5", "use --max-length instead"),
                      ("chunk_size=5", "chunk_size is not an engine option")]:
        assert main(["rank", "q", "--docs", str(docs), "-m", str(tiny_model_dir), "-e", "hf", "-E", arg]) == 2
        assert capsys.readouterr().err == f"genrank: error: --engine-arg {arg!r}: {says}\n"


def test_commands_close_the_reranker_they_made(tiny_model_dir, docs_file, closed_engines, capsys):
    assert main(["rank", SEED_QUERY, "--docs", str(docs_file), "-m", str(tiny_model_dir), "-e", "hf", "--json"]) == 0
    assert len(closed_engines) == 1


def test_refusals_are_one_line_and_bugs_show_their_traceback(tiny_model_dir, docs_file, monkeypatch, capsys):
    from genrank import Reranker

    base = ["rank", SEED_QUERY, "--docs", str(docs_file), "-m", str(tiny_model_dir), "-e", "hf"]
    assert main([*base, "--max-length", "8"]) == 2  # genrank's own refusal
    err = capsys.readouterr().err  # the weights' loading bar is off: the error is all there is
    assert err.startswith("genrank: error: max_length=8 leaves no room") and len(err.splitlines()) == 1
    assert main(["rank", "q", "--docs", str(docs_file), "-m", str(tiny_model_dir / "missing"), "-e", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrank: error: cannot load the model:") and len(err.splitlines()) == 1

    def bug(self, *args, **kwargs):
        raise ValueError("an index went wrong")  # not genrank's message for the user: a bug

    monkeypatch.setattr(Reranker, "rank", bug)
    with pytest.raises(ValueError, match="an index went wrong"):
        main(base)


@pytest.mark.parametrize(("command", "option", "value", "wanted"), [
    (["score", "{tmp}/in.jsonl", "-o", "{tmp}/out.jsonl"], "--chunk-size", "0", "a positive integer"),
    (["score", "{tmp}/in.jsonl", "-o", "{tmp}/out.jsonl", "--ray"], "--concurrency", "0", "a positive integer"),
    (["score", "{tmp}/in.jsonl", "-o", "{tmp}/out.jsonl", "--ray"], "--num-gpus", "-1", "a non-negative number"),
    (["rank", "q", "--docs", "{tmp}/in.jsonl"], "--max-length", "-3", "a positive integer"),
    (["rank", "q", "--docs", "{tmp}/in.jsonl"], "--top-k", "0", "a positive integer"),
    (["eval", "{tmp}"], "--max-queries", "0", "a positive integer"),
    (["calibrate", "{tmp}", "-o", "{tmp}/c.json"], "--held-out", "1.5", "a number between 0 and 1"),
    (["serve"], "--max-batch-pairs", "-1", "a non-negative integer"),
    (["serve"], "--max-documents", "0", "a positive integer"),
    (["serve"], "--body-timeout", "0", "a positive number"),
])
def test_a_bad_count_names_its_option_and_value_before_anything_is_loaded(command, option, value, wanted, tmp_path,
                                                                          capsys):
    (tmp_path / "in.jsonl").write_text('{"id": 1, "query": "q", "document": "d"}\n')
    with pytest.raises(SystemExit) as e:
        main([arg.format(tmp=tmp_path) for arg in command] + [option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(rf"argument {option}(/-\w)?: must be {wanted}, got '{re.escape(value)}'", err), err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]

import pytest

from genrank import PromptBuilder, TemplateError, list_templates, load_template
from genrank.prompts import label_token_ids

CARD_SYSTEM = ("Given a query and a piece of text, output a score of 1-7 based on how related the query is "
               "to the text. 1 means least related and 7 is most related.")


def test_shipped_templates_are_listed():
    names = {t["name"] for t in list_templates()}
    assert {"lb-reranker-v1", "qwen3-reranker", "lb-reranker-v1-instruct"} <= names


def test_lb_reranker_is_the_default_with_card_strings():
    t = load_template()
    assert t.name == "lb-reranker-v1"
    assert t.system == CARD_SYSTEM
    assert t.user_message("Q?", "Some text.") == "<<<Query>>>\nQ?\n\n<<<Context>>>\nSome text."
    assert t.labels == tuple("1234567") and t.values == (1, 2, 3, 4, 5, 6, 7)
    assert t.normalize is True and not t.takes_instruction


def test_qwen3_and_instruction_templates():
    q3 = load_template("qwen3-reranker")
    assert q3.labels == ("no", "yes") and q3.values == (0, 1)
    assert q3.assistant_prefix == "<think>\n\n</think>\n\n"
    assert q3.user_message("q", "d").startswith("<Instruct>: Given a web search query")
    inst = load_template("lb-reranker-v1-instruct")
    assert inst.takes_instruction
    assert inst.user_message("q", "d", "Find claims.").startswith("<<<Instruction>>>\nFind claims.\n\n<<<Query>>>\nq")


def test_user_template_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('system = "Rate."\nuser = "Q: {query} D: {document}"\n[labels]\n"no" = 0\n"yes" = 1\n'
                    '[score]\nnormalize = false\n')
    t = load_template(path)
    assert t.name == "mine" and t.labels == ("no", "yes") and t.normalize is False
    assert t.messages("a", "b") == [{"role": "system", "content": "Rate."}, {"role": "user", "content": "Q: a D: b"}]


@pytest.mark.parametrize("body, message", [
    ('user = "{query}"\n[labels]\n"1" = 1\n"2" = 2\n', "must use {query} and {document}"),
    ('user = "{query} {document} {other}"\n[labels]\n"1" = 1\n"2" = 2\n', "'other'"),
    ('system = "s"\n[labels]\n"1" = 1\n"2" = 2\n', "missing field 'user'"),
    ('user = "{query} {document}"\n[labels]\n"1" = 1\n', "at least two labels"),
    ('user = "{query} {document}"\n[labels]\n"1" = "high"\n"2" = 2\n', "label '1' must map to a number"),
    ('user = "{query} {document}"\n[labels]\n"1" = 1\n"2" = 2\n[score]\nmethod = "max"\n', "method 'max'"),
    ('user = "{query} {document}\n', "not valid TOML"),
    ('user = "{query} {document"\n[labels]\n"1" = 1\n"2" = 2\n', "field 'user' is not a valid format string"),
    ('user = "{query} {document}"\nscore = "expected"\n[labels]\n"1" = 1\n"2" = 2\n',
     "field 'score' must be a table, got 'expected'"),
])
def test_bad_template_files_name_the_problem(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")) as e:
        load_template(path)
    assert repr(str(path)) in str(e.value)


def test_instruction_field_is_found_by_name_not_by_text(tmp_path):
    path = tmp_path / "conv.toml"
    path.write_text('user = "{instruction!s}: {query} {document}"\ndefault_instruction = "Rank."\n'
                    '[labels]\n"1" = 1\n"2" = 2\n')
    t = load_template(path)
    assert t.takes_instruction
    assert t.user_message("q", "d") == "Rank.: q d" and t.user_message("q", "d", "Find.") == "Find.: q d"
    assert t.instruction(None) == "Rank." and t.instruction("") == ""
    path.write_text('user = "{query} {document} {{instruction}}"\n[labels]\n"1" = 1\n"2" = 2\n')
    literal = load_template(path)
    assert not literal.takes_instruction and literal.user_message("q", "d") == "q d {instruction}"


def test_unknown_template_name_lists_shipped_ones():
    with pytest.raises(TemplateError, match="unknown template 'nope'.*lb-reranker-v1"):
        load_template("nope")
    with pytest.raises(TemplateError, match="does not exist"):
        load_template("/no/such/file.toml")


def test_label_ids_come_from_the_tokenizer(tiny_tokenizer):
    ids = label_token_ids(tiny_tokenizer, list("1234567"))
    assert [tiny_tokenizer.decode([i]) for i in ids] == list("1234567")


def test_multi_token_label_is_a_clear_error(tiny_tokenizer, tmp_path):
    path = tmp_path / "long.toml"
    path.write_text('user = "{query} {document}"\n[labels]\n"definitely irrelevant" = 0\n"yes" = 1\n')
    with pytest.raises(TemplateError, match=r"label 'definitely irrelevant' is \d+ tokens .* in tokenizer"):
        PromptBuilder(load_template(path), tiny_tokenizer)


def test_readme_recipe_examples_load(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Adding a recipe"):]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)[:2]
    loaded = []
    for n, block in enumerate(blocks):
        (tmp_path / f"r{n}.toml").write_text(block)
        loaded.append(load_template(tmp_path / f"r{n}.toml"))
    assert [t.score.kind for t in loaded] == ["expected", "logit"]
    assert loaded[1].pieces[0].token == "bos" and loaded[1].truncation.cut == ("document",)


def test_shipped_recipes_name_their_models_and_score_kinds():
    from genrank.templates import template_for_model

    assert template_for_model("mixedbread-ai/mxbai-rerank-large-v2").name == "mxbai-rerank-v2"
    assert template_for_model("/models/Qwen3-Reranker-4B/").name == "qwen3-reranker"
    assert template_for_model("BAAI/bge-reranker-v2-gemma").name == "bge-reranker-v2-gemma"
    assert template_for_model("lightblue/lb-reranker-0.5B-v1.0").name == "lb-reranker-v1"
    assert template_for_model("someone/some-model") is None
    mx = load_template("mxbai-rerank-v2")
    assert mx.score.kind == "log_odds" and mx.labels == ("0", "1") and mx.max_length == 8192
    assert mx.score_rule("mixedbread-ai/mxbai-rerank-base-v2").shift == 4.5 and mx.score_rule("x").shift == 6.0
    bge = load_template("bge-reranker-v2-gemma")
    assert bge.score.kind == "logit" and bge.score.accepts == ("logits",) and bge.max_length == 512
    q3 = load_template("qwen3-reranker")
    assert q3.max_length == 8192 and [p.name for p in q3.pieces] == ["prefix", "pair", "suffix"] and q3.has_chat


@pytest.mark.parametrize("body, message", [
    ('[[pieces]]\ntext = "{query}"\n[labels]\n"1" = 1\n[score]\nkind = "logit"\n', "must use {query} and {document}"),
    ('[[pieces]]\ntext = "{query} {document}"\n[labels]\n"1" = 1\n"2" = 2\n[score]\nkind = "logit"\n',
     "needs exactly one label for score kind 'logit'"),
    ('[[pieces]]\ntext = "{query} {document}"\n[labels]\n"1" = 1\n[score]\nkind = "log_odds"\n',
     "needs exactly two labels for score kind 'log_odds'"),
    ('[[pieces]]\ntoken = "eos"\n[[pieces]]\ntext = "{query}{document}"\n[labels]\n"1" = 1\n[score]\nkind = "logit"\n',
     "token 'eos' is not one of ('bos',)"),
    ('[[pieces]]\nname = "a"\ntext = "{query}{document}"\n[truncate]\ncut = ["b"]\n[labels]\n"1" = 1\n'
     '[score]\nkind = "logit"\n', "[truncate] cut names unknown pieces ['b']"),
    ('[[pieces]]\ntext = "{query}{document}"\n[labels]\n"1" = 1\n[score]\nkind = "logit"\nrelevance = "linear"\n',
     "relevance 'linear' needs bounded scores"),
])
def test_bad_recipes_name_the_problem(tmp_path, body, message):
    import re

    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(TemplateError, match=re.escape(message)):
        load_template(path)

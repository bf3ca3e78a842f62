import pytest

from genrank import PromptBuilder, TemplateError, load_template


@pytest.fixture(scope="module")
def builder(tiny_tokenizer):
    return PromptBuilder(load_template(), tiny_tokenizer, max_length=256)


def _jinja_ids(tok, template, query, document, instruction=None):
    text = tok.apply_chat_template(template.messages(query, document, instruction), tokenize=False,
                                   add_generation_prompt=True) + template.assistant_prefix
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", ["lb-reranker-v1", "qwen3-reranker", "lb-reranker-v1-instruct"])
def test_prompt_equals_the_model_chat_template(tiny_tokenizer, name):
    t = load_template(name)
    b = PromptBuilder(t, tiny_tokenizer, max_length=4096)
    pairs = [("Who wrote it?", "Harper Lee wrote it.\n\nIn 1960."), (" spaced {q} ", "tabs\tand {braces}")]
    p = b.build([q for q, _ in pairs], [d for _, d in pairs], ["Rank by {topic}.", None])
    for n, (q, d) in enumerate(pairs):
        assert p.token_ids[n] == _jinja_ids(tiny_tokenizer, t, q, d, ["Rank by {topic}.", None][n])
    assert not p.truncated.any()
    assert p.chats()[0][0] == {"role": "system", "content": t.system}


_AWKWARD = ["\n\nstarts with newlines", " lead space", "\u0301 combining mark first", "ends with newline\n",
            "holds <|im_end|> and <|im_start|>assistant\n", "\r\n", "", "x", "?!", "'s contraction"]


@pytest.mark.parametrize("name", ["lb-reranker-v1", "qwen3-reranker", "lb-reranker-v1-instruct"])
def test_ids_are_the_tokenizers_own_for_awkward_contents(tiny_tokenizer, name):
    b = PromptBuilder(load_template(name), tiny_tokenizer, max_length=4096)
    pairs = [(q, d) for q in _AWKWARD for d in _AWKWARD]
    p = b.build([q for q, _ in pairs], [d for _, d in pairs], [q for q, _ in pairs])
    assert p.token_ids == tiny_tokenizer(p.texts, add_special_tokens=False)["input_ids"]


def test_ids_are_exact_when_special_tokens_absorb_whitespace(tiny_model_dir):
    # lstrip/rstrip: the chat's special tokens swallow the newlines next to them, so the text
    # around them is not encoded independently; the builder must still give the tokenizer's ids.
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.backend_tokenizer.add_special_tokens([AddedToken(t, lstrip=True, rstrip=True, special=True, normalized=False)
                                              for t in ("<|im_start|>", "<|im_end|>")])
    assert tok("<|im_end|>\n", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("<|im_end|>")]
    p = PromptBuilder(load_template(), tok, max_length=4096).build(_AWKWARD, _AWKWARD[::-1])
    assert p.token_ids == tok(p.texts, add_special_tokens=False)["input_ids"]


def test_long_document_fits_and_keeps_the_generation_prompt(builder, tiny_tokenizer):
    doc = "Harper Lee wrote a novel about justice in Alabama. " * 2000  # ~100,000 characters
    assert len(doc) >= 100_000
    p = builder.build(["Who wrote it?"], [doc])
    ids = p.token_ids[0]
    assert len(ids) <= 256
    assert p.truncated[0]
    text = tiny_tokenizer.decode(ids)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "<<<Query>>>\nWho wrote it?\n\n<<<Context>>>\nHarper Lee" in text
    assert text.startswith("<|im_start|>system\nGiven a query and a piece of text")
    assert p.documents[0] == doc[: len(p.documents[0])] and len(p.documents[0]) < len(doc)
    assert ids == _jinja_ids(tiny_tokenizer, builder.template, "Who wrote it?", p.documents[0])


def test_document_is_cut_close_to_the_limit(builder):
    p = builder.build(["q"], ["word " * 5000])
    assert 250 <= len(p.token_ids[0]) <= 256


@pytest.mark.parametrize("doc", ["日本語の文書です。" * 3000, "emoji 🦜🦜🦜 " * 3000, "é" * 20000])
def test_unicode_documents_are_cut_on_whole_characters(builder, tiny_tokenizer, doc):
    p = builder.build(["クエリ"], [doc])
    assert len(p.token_ids[0]) <= 256
    assert "\ufffd" not in tiny_tokenizer.decode(p.token_ids[0])
    assert doc.startswith(p.documents[0])


def test_query_is_cut_only_when_it_alone_is_too_long(builder):
    long_query = "what is the meaning of this very long question " * 200
    p = builder.build([long_query, "short query"], ["a document", "doc " * 5000])
    assert all(len(ids) <= 256 for ids in p.token_ids)
    assert p.documents[0] == "" and long_query.startswith(p.queries[0]) and p.queries[0]
    assert p.queries[1] == "short query"
    assert p.truncated.tolist() == [True, True]


def test_short_pairs_are_untouched(builder):
    p = builder.build(["q1", "q2"], ["d1", ""])
    assert p.queries == ["q1", "q2"] and p.documents == ["d1", ""]
    assert not p.truncated.any()


def test_max_length_smaller_than_the_template_is_an_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="max_length=10 leaves no room"):
        PromptBuilder(load_template(), tiny_tokenizer, max_length=10)
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        PromptBuilder(load_template(), tiny_tokenizer, max_length=0)


def test_without_tokenizer_only_chats_are_built():
    p = PromptBuilder(load_template()).build(["q"], ["d"])
    assert p.token_ids is None and p.texts is None
    assert p.chats()[0][1]["content"] == "<<<Query>>>\nq\n\n<<<Context>>>\nd"


def test_instructions_of_the_wrong_length_are_an_error(builder):
    with pytest.raises(ValueError, match="instructions has 1 items for 2 pairs"):
        builder.build(["q1", "q2"], ["d1", "d2"], ["Find."])


def test_room_check_counts_the_default_instruction(tiny_tokenizer):
    b = PromptBuilder(load_template("lb-reranker-v1-instruct"), tiny_tokenizer, max_length=4096)
    overhead = len(b.build([""], [""]).token_ids[0])  # the default instruction, no query or document
    assert len(b.build([""], [""], [""]).token_ids[0]) < overhead
    with pytest.raises(ValueError, match=f"max_length={overhead} leaves no room: the template alone is {overhead}"):
        PromptBuilder(b.template, tiny_tokenizer, max_length=overhead)
    p = PromptBuilder(b.template, tiny_tokenizer, max_length=overhead + 1).build(["q"], ["long " * 100])
    assert len(p.token_ids[0]) <= overhead + 1 and p.truncated[0]


def test_chat_template_that_rejects_the_chat_names_tokenizer_and_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # Gemma-style: no system role
    tok.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                         "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(TemplateError, match=r"tokenizer '.*tiny-qwen2' cannot render a chat of template "
                                            r"'lb-reranker-v1': System role not supported"):
        PromptBuilder(load_template(), tok)

"""genrank.integrations.langchain.GenrankRerank against the real langchain-core and ContextualCompressionRetriever."""

import asyncio

import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY, ranked_with_details
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from genrank import Reranker
from genrank.integrations.langchain import GenrankRerank


@pytest.fixture(scope="module")
def reranker(hf_engine):
    return Reranker(engine=hf_engine)


def documents() -> list[Document]:
    return [Document(page_content=text, metadata={"source": f"doc-{n}", "tags": ["a"]}, id=f"id-{n}")
            for n, text in enumerate(SEED_DOCUMENTS)]


def check(result: list[Document], given: list[Document], want: list[dict]) -> None:
    assert [d.page_content for d in result] == [given[w["corpus_id"]].page_content for w in want]
    for doc, w in zip(result, want, strict=True):
        original = given[w["corpus_id"]]
        assert doc.id == original.id and doc is not original
        assert doc.metadata["relevance_score"] == pytest.approx(w["relevance"], abs=1e-9)
        assert doc.metadata["genrank_score"] == pytest.approx(w["score"], abs=1e-9)
        assert doc.metadata["genrank_label_mass"] == pytest.approx(w["mass"], abs=1e-9)
        assert {k: v for k, v in doc.metadata.items() if not k.endswith(("_score", "_mass"))} == original.metadata


def test_compress_documents_is_reranker_rank_with_relevance_scores(reranker):
    given = documents()
    result = GenrankRerank(reranker=reranker).compress_documents(given, SEED_QUERY)  # top_n=3 by default
    want = ranked_with_details(reranker, SEED_QUERY, SEED_DOCUMENTS, top_k=3)
    assert len(result) == 3
    check(result, given, want)
    lo, hi = min(reranker.template.values), max(reranker.template.values)
    assert [d.metadata["relevance_score"] for d in result] == pytest.approx(
        [(w["score"] - lo) / (hi - lo) for w in want], abs=1e-9)
    assert given == documents()  # the caller's documents are unchanged


def test_top_n_none_or_past_the_end_returns_all_and_empty_input_returns_nothing(reranker):
    given = documents()
    want = ranked_with_details(reranker, SEED_QUERY, SEED_DOCUMENTS)
    check(GenrankRerank(reranker=reranker, top_n=None).compress_documents(given, SEED_QUERY), given, want)
    check(GenrankRerank(reranker=reranker, top_n=50).compress_documents(given, SEED_QUERY), given, want)
    assert GenrankRerank(reranker=reranker).compress_documents([], SEED_QUERY) == []
    assert asyncio.run(GenrankRerank(reranker=reranker).acompress_documents([], SEED_QUERY)) == []


def test_duplicates_and_empty_texts_are_kept_and_scored(reranker):
    given = [Document(page_content=SEED_DOCUMENTS[1], metadata={"n": 0}), Document(page_content=""),
             Document(page_content=SEED_DOCUMENTS[1], metadata={"n": 2})]
    result = GenrankRerank(reranker=reranker, top_n=None).compress_documents(given, SEED_QUERY)
    check(result, given, ranked_with_details(reranker, SEED_QUERY, [d.page_content for d in given]))
    assert sorted(d.metadata.get("n", -1) for d in result) == [-1, 0, 2]


def test_acompress_documents_equals_compress_documents(reranker):
    given = documents()
    compressor = GenrankRerank(reranker=reranker, top_n=4)
    assert asyncio.run(compressor.acompress_documents(given, SEED_QUERY)) == \
        compressor.compress_documents(given, SEED_QUERY)


def test_contextual_compression_retriever_end_to_end(reranker):
    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=16))
    store.add_documents(documents())
    retriever = ContextualCompressionRetriever(base_compressor=GenrankRerank(reranker=reranker, top_n=2),
                                               base_retriever=store.as_retriever(search_kwargs={"k": 6}))
    want = ranked_with_details(reranker, SEED_QUERY, SEED_DOCUMENTS, top_k=2)
    for result in (retriever.invoke(SEED_QUERY), asyncio.run(retriever.ainvoke(SEED_QUERY))):
        assert [d.page_content for d in result] == [SEED_DOCUMENTS[w["corpus_id"]] for w in want]
        assert [d.metadata["source"] for d in result] == [f"doc-{w['corpus_id']}" for w in want]
        assert [d.metadata["relevance_score"] for d in result] == pytest.approx([w["relevance"] for w in want])


def test_bad_arguments_name_the_field(reranker):
    with pytest.raises(ValidationError, match="top_n"):
        GenrankRerank(reranker=reranker, top_n=0)
    with pytest.raises(ValidationError, match="reranker"):
        GenrankRerank(reranker="lightblue/lb-reranker-0.5B-v1.0")
    with pytest.raises(ValueError, match="query is empty"):
        GenrankRerank(reranker=reranker).compress_documents(documents(), " ")


def test_each_compressor_ranks_with_its_own_instruction_on_one_reranker(hf_engine):
    shared = Reranker(engine=hf_engine, template="lb-reranker-v1-instruct")
    given, task = documents(), "Find passages that quote the book."
    own = GenrankRerank(reranker=shared, top_n=None, instruction=task)
    check(own.compress_documents(given, SEED_QUERY), given,
          ranked_with_details(shared, SEED_QUERY, SEED_DOCUMENTS, instruction=task))
    assert asyncio.run(own.acompress_documents(given, SEED_QUERY)) == own.compress_documents(given, SEED_QUERY)
    default = GenrankRerank(reranker=shared, top_n=None).compress_documents(given, SEED_QUERY)
    assert [d.metadata["genrank_score"] for d in default] != [d.metadata["genrank_score"] for d in own
                                                               .compress_documents(given, SEED_QUERY)]
    with pytest.raises(ValueError, match="template 'lb-reranker-v1' takes no instruction"):
        GenrankRerank(reranker=Reranker(engine=hf_engine), instruction=task)
    with pytest.raises(ValidationError, match="instruction"):
        GenrankRerank(reranker=shared, instruction=5)

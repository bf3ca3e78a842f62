"""genrank.integrations.haystack.GenrankRanker against the real haystack-ai: component, pipeline, YAML round trip."""

import asyncio

import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY, ranked_with_details
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import Secret

from genrank import Reranker
from genrank.integrations.haystack import GenrankRanker

ENGINE = {"device": "cpu"}


@pytest.fixture(scope="module")
def reranker(hf_engine):
    return Reranker(engine=hf_engine)


@pytest.fixture(scope="module")
def ranker(tiny_model_dir):
    """One warmed-up component on the tiny model, shared by the module's tests."""
    component = GenrankRanker(str(tiny_model_dir), engine="hf", engine_options=ENGINE)
    component.warm_up()
    return component


def documents() -> list[Document]:
    return [Document(content=text, meta={"title": f"Book {n}", "year": 1900 + n}, score=0.1 * n)
            for n, text in enumerate(SEED_DOCUMENTS)]


def check(result: list[Document], given: list[Document], want: list[dict]) -> None:
    assert [d.id for d in result] == [given[w["corpus_id"]].id for w in want]
    for doc, w in zip(result, want, strict=True):
        original = given[w["corpus_id"]]
        assert doc.score == pytest.approx(w["relevance"], abs=1e-9)
        assert doc.meta["genrank_score"] == pytest.approx(w["score"], abs=1e-9)
        assert doc.meta["genrank_label_mass"] == pytest.approx(w["mass"], abs=1e-9)
        assert doc.content == original.content and doc is not original
        assert {k: v for k, v in doc.meta.items() if not k.startswith("genrank_")} == original.meta


def test_run_is_reranker_rank_with_relevance_scores(ranker, reranker):
    given = documents()
    result = ranker.run(SEED_QUERY, given, top_k=3)["documents"]
    check(result, given, ranked_with_details(reranker, SEED_QUERY, SEED_DOCUMENTS, top_k=3))
    assert given == documents()  # the caller's documents are unchanged
    assert len(ranker.run(SEED_QUERY, given)["documents"]) == 6  # top_k=10 by default, past the end


def test_meta_fields_to_embed_and_score_threshold(tiny_model_dir, reranker):
    ranker = GenrankRanker(str(tiny_model_dir), engine="hf", engine_options=ENGINE, meta_fields_to_embed=["title"],
                           embedding_separator=" | ")
    ranker.reranker = reranker  # the same model, already loaded
    given = documents()
    want = ranked_with_details(reranker, SEED_QUERY, [f"Book {n} | {text}" for n, text in enumerate(SEED_DOCUMENTS)])
    check(ranker.run(SEED_QUERY, given)["documents"], given, want)
    threshold = (want[1]["relevance"] + want[2]["relevance"]) / 2
    check(ranker.run(SEED_QUERY, given, score_threshold=threshold)["documents"], given, want[:2])


def test_empty_list_duplicates_and_empty_content(ranker, reranker):
    assert ranker.run(SEED_QUERY, []) == {"documents": []}
    low = Document(id="dup", content=SEED_DOCUMENTS[3], score=0.1)
    high = Document(id="dup", content=SEED_DOCUMENTS[0], score=0.9)
    empty = Document(id="empty", content=None, meta={"kind": "image"})
    result = ranker.run(SEED_QUERY, [low, empty, high])["documents"]
    # deduplicated by id, keeping the higher-scored one (as Haystack's rankers do); no content scores as ""
    check(result, [high, empty], ranked_with_details(reranker, SEED_QUERY, [SEED_DOCUMENTS[0], ""]))


def test_run_async_equals_run(ranker):
    given = documents()
    assert asyncio.run(ranker.run_async(SEED_QUERY, given, top_k=4)) == ranker.run(SEED_QUERY, given, top_k=4)


def test_model_loads_in_warm_up_not_in_init(tiny_model_dir):
    ranker = GenrankRanker(str(tiny_model_dir), engine="hf", engine_options=ENGINE)
    assert ranker.reranker is None
    ranker.warm_up()
    loaded = ranker.reranker
    ranker.warm_up()
    assert isinstance(loaded, Reranker) and ranker.reranker is loaded


def test_pipeline_end_to_end_and_yaml_round_trip(tiny_model_dir, reranker):
    store = InMemoryDocumentStore(index="genrank-haystack-test")
    store.write_documents(documents())
    retriever = InMemoryBM25Retriever(document_store=store, top_k=6)
    candidates = [d.content for d in retriever.run(query=SEED_QUERY)["documents"]]  # those sharing a word
    assert len(candidates) > 3
    want = [candidates[w["corpus_id"]] for w in ranked_with_details(reranker, SEED_QUERY, candidates, top_k=3)]
    pipe = Pipeline()
    pipe.add_component("retriever", retriever)
    pipe.add_component("ranker", GenrankRanker(str(tiny_model_dir), engine="hf", engine_options=ENGINE, top_k=3))
    pipe.connect("retriever.documents", "ranker.documents")
    inputs = {"retriever": {"query": SEED_QUERY}, "ranker": {"query": SEED_QUERY}}

    yaml = pipe.dumps()
    assert "genrank.integrations.haystack.GenrankRanker" in yaml and str(tiny_model_dir) in yaml
    loaded = Pipeline.loads(yaml, allowed_modules=["genrank.integrations.haystack"])  # Haystack 3's allowlist
    assert loaded.get_component("ranker").reranker is None  # nothing loads until the pipeline warms up
    assert loaded.get_component("ranker").to_dict() == pipe.get_component("ranker").to_dict()
    for result in (pipe.run(inputs), loaded.run(inputs), asyncio.run(loaded.run_async(inputs))):
        assert [d.content for d in result["ranker"]["documents"]] == want


def test_secrets_stay_out_of_pipeline_files(tiny_model_dir):
    with pytest.raises(ValueError, match="api_key=Secret"):
        GenrankRanker("m", engine="openai", engine_options={"api_key": "sk-123"})
    with pytest.raises(ValueError, match="password"):
        GenrankRanker("m", engine="openai", engine_options={"base_url": "http://u:pw@127.0.0.1:1/v1"})
    with pytest.raises(ValueError, match="Cannot serialize token-based secret"):
        GenrankRanker("m", engine="openai", api_key=Secret.from_token("sk-123")).to_dict()
    ranker = GenrankRanker("m", engine="openai", api_key=Secret.from_env_var("GENRANK_API_KEY"))
    data = ranker.to_dict()
    assert data["init_parameters"]["api_key"] == {"type": "env_var", "env_vars": ["GENRANK_API_KEY"], "strict": True}
    assert GenrankRanker.from_dict(data).api_key == ranker.api_key


def test_bad_arguments(reranker, hf_engine):
    with pytest.raises(ValueError, match="top_k must be > 0"):
        GenrankRanker("m", top_k=0)
    with pytest.raises(TypeError, match="engine must be an engine name"):
        GenrankRanker(engine=hf_engine)
    ranker = GenrankRanker("m")
    ranker.reranker = reranker
    with pytest.raises(ValueError, match="top_k must be > 0"):
        ranker.run(SEED_QUERY, documents(), top_k=0)


def test_close_closes_the_reranker_warm_up_built(tiny_model_dir, closed_engines):
    ranker = GenrankRanker(str(tiny_model_dir), engine="hf", engine_options=ENGINE)
    ranker.warm_up()
    loaded = ranker.reranker
    ranker.close()
    assert ranker.reranker is None and closed_engines == [loaded.engine]
    with pytest.raises(RuntimeError, match="closed"):
        loaded.score([("q", "d")])
    ranker.close()  # again: nothing
    assert len(closed_engines) == 1


def test_an_instruction_given_to_run_replaces_the_init_one_for_that_run(tiny_model_dir, hf_engine):
    task = "Find passages that quote the book."
    ranker = GenrankRanker(str(tiny_model_dir), engine="hf", engine_options=ENGINE,
                           template="lb-reranker-v1-instruct", instruction="Find anything.")
    ranker.warm_up()
    try:
        given = documents()
        result = ranker.run(SEED_QUERY, given, top_k=6, instruction=task)["documents"]
        check(result, given, ranked_with_details(ranker.reranker, SEED_QUERY, SEED_DOCUMENTS, instruction=task))
        assert asyncio.run(ranker.run_async(SEED_QUERY, given, top_k=6, instruction=task))["documents"] == result
        check(ranker.run(SEED_QUERY, given, top_k=6)["documents"], given,
              ranked_with_details(ranker.reranker, SEED_QUERY, SEED_DOCUMENTS, instruction="Find anything."))
        assert [d.score for d in ranker.run(SEED_QUERY, given, top_k=6)["documents"]] != [d.score for d in result]
        pipeline = Pipeline()
        pipeline.add_component("ranker", ranker)
        assert pipeline.run({"ranker": {"query": SEED_QUERY, "documents": given, "top_k": 6,
                                        "instruction": task}})["ranker"]["documents"] == result
    finally:
        ranker.close()
    plain = GenrankRanker("m")
    plain.reranker = Reranker(engine=hf_engine)
    with pytest.raises(ValueError, match="template 'lb-reranker-v1' takes no instruction"):
        plain.run(SEED_QUERY, documents(), instruction=task)

"""genrank.integrations.llama_index.GenrankRerank against the real llama-index-core, in a query engine."""

import asyncio

import pytest
from conftest import SEED_DOCUMENTS, SEED_QUERY, ranked_with_details
from llama_index.core import VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

from genrank import Reranker
from genrank.integrations.llama_index import GenrankRerank


@pytest.fixture(scope="module")
def reranker(hf_engine):
    return Reranker(engine=hf_engine)


def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=text, id_=f"node-{n}", metadata={"title": f"Book {n}"},
                                        excluded_embed_metadata_keys=["title"] if n % 2 else []),
                          score=0.5 + n / 100)
            for n, text in enumerate(SEED_DOCUMENTS)]


def check(result: list[NodeWithScore], given: list[NodeWithScore], want: list[dict]) -> None:
    assert [n.node.node_id for n in result] == [given[w["corpus_id"]].node.node_id for w in want]
    for item, w in zip(result, want, strict=True):
        original = given[w["corpus_id"]].node
        assert item.score == pytest.approx(w["relevance"], abs=1e-9)
        assert item.node.metadata["genrank_score"] == pytest.approx(w["score"], abs=1e-9)
        assert item.node.metadata["genrank_label_mass"] == pytest.approx(w["mass"], abs=1e-9)
        assert item.node.text == original.text and item.node is not original
        assert {k: v for k, v in item.node.metadata.items() if not k.startswith("genrank_")
                and k != "retrieval_score"} == original.metadata


def embed_texts(given: list[NodeWithScore]) -> list[str]:
    return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in given]


def test_postprocess_nodes_is_reranker_rank_on_the_embed_text(reranker):
    given = nodes()
    texts = embed_texts(given)
    assert texts[0].startswith("title: Book 0") and texts[1] == SEED_DOCUMENTS[1]  # metadata as LlamaIndex embeds it
    result = GenrankRerank(reranker=reranker, top_n=3).postprocess_nodes(given, query_str=SEED_QUERY)
    check(result, given, ranked_with_details(reranker, SEED_QUERY, texts, top_k=3))
    assert given == nodes()  # the caller's nodes and scores are unchanged
    # the scores stay out of what the LLM and the embedder read
    assert all("genrank" not in n.node.get_content(metadata_mode=MetadataMode.LLM) for n in result)
    assert all("genrank" not in n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in result)


def test_metadata_mode_and_keep_retrieval_score(reranker):
    given = nodes()
    rerank = GenrankRerank(reranker=reranker, top_n=6, metadata_mode=MetadataMode.NONE, keep_retrieval_score=True)
    result = rerank.postprocess_nodes(given, query_str=SEED_QUERY)
    check(result, given, ranked_with_details(reranker, SEED_QUERY, SEED_DOCUMENTS))
    assert [n.node.metadata["retrieval_score"] for n in result] == \
        [given[int(n.node.node_id.split("-")[1])].score for n in result]


def test_top_n_past_the_end_empty_list_duplicates_and_empty_text(reranker):
    given = nodes()
    check(GenrankRerank(reranker=reranker, top_n=50).postprocess_nodes(given, query_str=SEED_QUERY), given,
          ranked_with_details(reranker, SEED_QUERY, embed_texts(given)))
    assert GenrankRerank(reranker=reranker).postprocess_nodes([], query_str=SEED_QUERY) == []
    twice = [given[1], NodeWithScore(node=TextNode(text="", id_="empty")), given[1]]
    result = GenrankRerank(reranker=reranker, top_n=3).postprocess_nodes(twice, query_str=SEED_QUERY)
    check(result, twice, ranked_with_details(reranker, SEED_QUERY, embed_texts(twice)))


def test_async_postprocess_equals_sync(reranker):
    rerank = GenrankRerank(reranker=reranker, top_n=4)
    assert asyncio.run(rerank.apostprocess_nodes(nodes(), query_str=SEED_QUERY)) == \
        rerank.postprocess_nodes(nodes(), query_str=SEED_QUERY)


def test_query_engine_end_to_end(reranker):
    """A real VectorStoreIndex (mock embeddings, all equal) and query engine (MockLLM echoes its prompt)."""
    debug = LlamaDebugHandler()
    index = VectorStoreIndex([n.node for n in nodes()], embed_model=MockEmbedding(embed_dim=8))
    engine = RetrieverQueryEngine.from_args(index.as_retriever(similarity_top_k=6), llm=MockLLM(),
                                            node_postprocessors=[GenrankRerank(reranker=reranker, top_n=2)],
                                            callback_manager=CallbackManager([debug]))
    want = ranked_with_details(reranker, SEED_QUERY, embed_texts(nodes()), top_k=2)
    for response in (engine.query(SEED_QUERY), asyncio.run(engine.aquery(SEED_QUERY))):
        assert [n.node.node_id for n in response.source_nodes] == [f"node-{w['corpus_id']}" for w in want]
        assert [n.score for n in response.source_nodes] == pytest.approx([w["relevance"] for w in want])
        context = str(response)  # MockLLM answers with its prompt: the reranked nodes, best first
        positions = [context.index(SEED_DOCUMENTS[w["corpus_id"]]) for w in want]
        assert positions == sorted(positions) and "genrank" not in context
        assert sum(SEED_DOCUMENTS[i] in context for i in range(6)) == 2
    assert len(debug.get_event_pairs(CBEventType.RERANKING)) == 2


def test_bad_arguments(reranker):
    with pytest.raises(TypeError, match="reranker must be a genrank Reranker"):
        GenrankRerank(reranker="lightblue/lb-reranker-0.5B-v1.0")
    with pytest.raises(ValueError, match="top_n"):
        GenrankRerank(reranker=reranker, top_n=0)
    with pytest.raises(ValueError, match="needs the query"):
        GenrankRerank(reranker=reranker).postprocess_nodes(nodes())


def test_each_postprocessor_ranks_with_its_own_instruction_on_one_reranker(hf_engine):
    shared = Reranker(engine=hf_engine, template="lb-reranker-v1-instruct")
    given, task = nodes(), "Find passages that quote the book."
    own = GenrankRerank(reranker=shared, top_n=6, instruction=task)
    result = own.postprocess_nodes(given, query_str=SEED_QUERY)
    check(result, given, ranked_with_details(shared, SEED_QUERY, embed_texts(given), instruction=task))
    assert asyncio.run(own.apostprocess_nodes(given, query_str=SEED_QUERY)) == result
    default = GenrankRerank(reranker=shared, top_n=6).postprocess_nodes(given, query_str=SEED_QUERY)
    assert [n.score for n in default] != [n.score for n in result]
    with pytest.raises(ValueError, match="template 'lb-reranker-v1' takes no instruction"):
        GenrankRerank(reranker=Reranker(engine=hf_engine), instruction=task)

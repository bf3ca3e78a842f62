"""Batch scoring: a Parquet file of (query, document) pairs in, a Parquet file of scores out.

`genrank.batch.score_file` streams the input in chunks, writes rows in input order (id, score,
label_mass, error) and resumes where it stopped if rerun on the same output. The same as
`genrank score pairs.parquet -o scores.parquet`.

    pip install genrank[hf] pyarrow
    python examples/batch_parquet.py --model lightblue/lb-reranker-0.5B-v1.0 --output scores.parquet

Without --input, it first writes a small pairs.parquet next to the output: two queries against
the six "To Kill a Mockingbird" documents.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from genrank import Reranker
from genrank.batch import score_file

QUERIES = ["Who wrote 'To Kill a Mockingbird'?", "Which novel is about a white whale?"]
DOCUMENTS = Path(__file__).with_name("data") / "mockingbird.txt"


def write_demo_pairs(path: Path) -> None:
    documents = DOCUMENTS.read_text(encoding="utf-8").splitlines()
    pairs = [(q, d) for q in QUERIES for d in documents]
    pq.write_table(pa.table({"id": [f"pair-{i}" for i in range(len(pairs))],
                             "query": [q for q, _ in pairs], "document": [d for _, d in pairs]}), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="reranker model id or path (default: lb-reranker)")
    parser.add_argument("--engine", default="auto", help="genrank engine: auto, hf, vllm, lmdeploy, openai")
    parser.add_argument("--input", default=None, help="Parquet file with id, query and document columns")
    parser.add_argument("--output", default="scores.parquet", help="Parquet file for the scores")
    parser.add_argument("--chunk-size", type=int, default=1024, help="pairs read, scored and written at a time")
    args = parser.parse_args()

    output = Path(args.output)
    if args.input is None:
        args.input = output.with_name("pairs.parquet")
        write_demo_pairs(args.input)

    reranker = Reranker(args.model, engine=args.engine)
    summary = score_file(args.input, output, reranker, chunk_size=args.chunk_size)
    print(summary)

    # Output rows follow input order, so the two tables line up row by row.
    pairs, scores = pq.read_table(args.input).to_pylist(), pq.read_table(output).to_pylist()
    best: dict[str, tuple[float, str]] = {}
    for pair, row in zip(pairs, scores, strict=True):
        if row["error"] is None and row["score"] > best.get(pair["query"], (float("-inf"), ""))[0]:
            best[pair["query"]] = (row["score"], pair["document"])
    for query, (score, document) in best.items():
        print(f"{query}\n  best [{score:.3f}]: {document}")


if __name__ == "__main__":
    main()

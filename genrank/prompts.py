"""Build the chat for each (query, document) pair and render it to fit ``max_length`` tokens.

Content is data: the template's own text is encoded with the tokenizer's special tokens, and every
field (query, document, instruction) with special tokens split, so a document holding
``<|im_end|>`` or ``<|endoftext|>`` gets the ids of that text, never the control token.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .errors import InputError
from .scorer import ValueKind
from .templates import Template, TemplateError
from .validation import LONG_DOCUMENTS, LongDocuments, check_long_documents

log = logging.getLogger(__name__)

_SENTINELS = {"query": "\x00GENRANK_QUERY\x00", "document": "\x00GENRANK_DOCUMENT\x00",
              "instruction": "\x00GENRANK_INSTRUCTION\x00"}
_PROBES = (("  lead and trail  ", "{braces} <b>x</b>\n\n", "sp ace "), ("q", "", "\ttab"))
# Contents that test where the template's text around its special tokens could merge with the fields.
_EDGE_PROBES = ("\n\nlead", " lead", "\u0301combining", "trail\n", "trail ", "\r\n", "", "a\u3000b ")
# What the Rust tokenizer's lstrip/rstrip absorb next to an added token (char::is_whitespace).
_RUST_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
                   "\u200a\u2028\u2029\u202f\u205f\u3000"
_WORD_JOINER = "\u2060"
# Tokens kept past a cut point when a field is sliced before tokenizing, so that the slice's end
# (which may split a word) cannot change the tokens where the cut falls.
_MARGIN = 16


@dataclass(frozen=True)
class Labels:
    """The label strings of a template, their token ids where a tokenizer is known, and what the
    engine is asked for: ``kind="logprobs"`` (log-probabilities) or ``"logits"`` (raw logits)."""

    texts: tuple[str, ...]
    token_ids: tuple[int, ...] | None = None
    kind: ValueKind = "logprobs"


@dataclass
class Prompts:
    """The rendered prompts of a batch of pairs, after truncation.

    ``texts`` and ``token_ids`` are the chat rendered with the model's chat template (generation
    prompt and any assistant prefix included); they are ``None`` when no tokenizer is known, and
    then only ``chats()`` is available (for servers that apply their own template).

    With ``long_documents="chunks"`` a long document gives several prompts, one per window of it:
    ``pair_index[n]`` is the pair that prompt ``n`` belongs to (None: one prompt per pair).
    """

    template: Template
    queries: list[str]
    documents: list[str]
    instructions: list[str | None]
    texts: list[str] | None
    token_ids: list[list[int]] | None
    truncated: np.ndarray  # (N,) bool: the query or document was cut to fit
    altered: np.ndarray | None = None  # (N,) bool: special-token text in the content was neutralised
    pair_index: np.ndarray | None = None  # (N,) int: the pair of each prompt, when documents were windowed
    special_tokens: re.Pattern | None = None  # the tokenizer's special-token strings, when known

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def pairs(self) -> int:
        """The number of (query, document) pairs these prompts score."""
        return len(self) if self.pair_index is None else (int(self.pair_index[-1]) + 1 if len(self) else 0)

    def chats(self, neutralise: bool = False) -> list[list[dict[str, str]]]:
        """The system+user messages of each prompt (truncated texts).

        With ``neutralise``, special-token text in a query, document or instruction is broken up
        (see ``neutralise``) so that a server applying its own chat template reads it as text.
        """
        t = self.template
        fix = (lambda s: s) if not neutralise or self.special_tokens is None else \
            (lambda s: s if s is None else neutralise_text(s, self.special_tokens))
        return [t.messages(fix(q), fix(d), fix(i)) for q, d, i in zip(self.queries, self.documents, self.instructions)]

    def holding_special_tokens(self) -> set[int]:
        """Indices of prompts whose query, document or instruction holds special-token text."""
        if self.special_tokens is None:
            return set()
        search = self.special_tokens.search
        return {n for n, fields in enumerate(zip(self.queries, self.documents, self.instructions))
                if any(f and search(f) for f in fields)}

    @classmethod
    def concat(cls, parts: Sequence[Prompts]) -> Prompts:
        """The prompts of ``parts`` (same template) as one batch, in order; ``pair_index`` renumbered."""
        first = parts[0]
        tokenized = first.token_ids is not None
        offsets = np.cumsum([0] + [p.pairs for p in parts])
        windowed = any(p.pair_index is not None for p in parts)
        return cls(
            first.template, [q for p in parts for q in p.queries], [d for p in parts for d in p.documents],
            [i for p in parts for i in p.instructions], [t for p in parts for t in p.texts] if tokenized else None,
            [r for p in parts for r in p.token_ids] if tokenized else None,
            np.concatenate([p.truncated for p in parts]), np.concatenate([_altered(p) for p in parts]),
            np.concatenate([(p.pair_index if p.pair_index is not None else np.arange(len(p))) + off
                            for p, off in zip(parts, offsets)]) if windowed else None,
            first.special_tokens)


def _altered(prompts: Prompts) -> np.ndarray:
    return prompts.altered if prompts.altered is not None else np.zeros(len(prompts), dtype=bool)


def neutralise_text(text: str, special_tokens: re.Pattern) -> str:
    """``text`` with a word joiner (U+2060) after the first character of each special-token string.

    The tokenizer then reads that text as ordinary characters, never as the control token; the
    model sees the string with one invisible character added. Overlapping strings are each split;
    a one-character special token cannot be split and becomes U+FFFD (the replacement character).
    """
    # One pass over every position where a special-token string starts, overlapping ones included.
    pieces, done = [], 0
    while m := special_tokens.search(text, done):
        at = m.start()
        char = text[at]
        pieces += [text[done:at], "\ufffd" if special_tokens.fullmatch(char) else char + _WORD_JOINER]
        done = at + 1
    return "".join(pieces) + text[done:] if pieces else text


def special_tokens_pattern(tokenizer: Any) -> re.Pattern | None:
    """A regex matching the special-token strings of ``tokenizer`` (None when it has none)."""
    specials = sorted(_special_tokens(tokenizer), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, specials))) if specials else None


def _special_tokens(tokenizer: Any) -> dict[str, Any]:
    """Special-token string -> its AddedToken (lstrip/rstrip flags), as the tokenizer extracts them."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found = {t.content: t for t in decoder.values() if t.special and t.content}
    for text in getattr(tokenizer, "all_special_tokens", ()):  # special tokens not in the added vocabulary
        found.setdefault(text, None)
    return found


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


@dataclass(frozen=True)
class _Segment:
    """A piece of the rendered template between its special tokens.

    ``pattern`` is a str.format pattern when the piece holds fields (encoded per pair with
    special tokens split), else None and ``ids`` are its constant ids. ``strip`` is the whitespace
    the neighbouring special tokens absorb: (at the start, at the end).
    """

    pattern: str | None
    ids: tuple[int, ...] = ()
    strip: tuple[bool, bool] = (False, False)


class _Prompt(NamedTuple):
    """One fitted prompt: its fields as they went in, its text and ids; ``window``: one of a
    document's windows (or a pair that did not fit, with ``long_documents="chunks"``)."""

    query: str
    document: str
    instruction: str | None
    text: str
    ids: list[int]
    cut: bool
    altered: bool
    window: bool = False


@dataclass(frozen=True)
class _Query:
    """A (query, instruction) as every pair holding it is built: ``room`` is the tokens left for
    the document; ``prompt`` the whole prompt when the query had to be cut (no document fits)."""

    text: str
    instruction: str | None
    altered: bool
    room: int
    prompt: _Prompt | None = None


class PromptBuilder:
    """Renders pairs with a template and a tokenizer's chat template, cut to ``max_length`` tokens.

    The document is cut first, then the query if it alone is too long, at token boundaries of the
    raw texts before templating; the template and the generation prompt are never cut. With
    ``long_documents="chunks"`` a document that does not fit is split into windows that each fill
    the room the template leaves, one prompt per window.
    """

    def __init__(self, template: Template, tokenizer: Any | None = None, max_length: int = 1024):
        if not isinstance(max_length, int) or max_length < 1:
            raise InputError(f"max_length must be a positive integer, got {max_length!r}")
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.labels = Labels(template.labels, label_token_ids(tokenizer, template.labels) if tokenizer else None)
        self.special_tokens = special_tokens_pattern(tokenizer) if tokenizer is not None else None
        self._split = _split_backend(tokenizer)
        self._format = self._fast_format() if tokenizer is not None else None
        self._segments = self._plan()
        if tokenizer is not None:
            overhead = len(self._encode([""], [""], [None])[0][0])
            self._token_chars = _longest_token_chars(tokenizer)
            if overhead >= max_length:
                raise InputError(f"max_length={max_length} leaves no room: the template alone is "
                                 f"{overhead} tokens with this tokenizer")

    def render(self, query: str, document: str, instruction: str | None) -> str:
        """The full prompt text for one pair, as the model's chat template renders it."""
        if self._format is not None:
            return self._format.format(query=query, document=document,
                                       instruction=self.template.instruction(instruction))
        return self._jinja(query, document, instruction)

    def build(self, queries: Sequence[str], documents: Sequence[str],
              instructions: Sequence[str | None] | None = None, *, long_documents: LongDocuments = "truncate",
              max_document_tokens: int | None = None) -> Prompts:
        """Render and fit a batch of pairs (already validated strings).

        ``max_document_tokens`` first cuts each document to that many tokens (of the document
        alone); ``long_documents`` says what happens to a prompt still over ``max_length``.

        The work is linear in the input: each distinct (query, instruction) is fitted once, and a
        field is sliced by characters to what its room in the prompt can hold before it is
        tokenized, so a pair costs a few encodes of at most about ``max_length`` tokens.
        """
        queries, documents = list(queries), list(documents)
        instr = list(instructions) if instructions is not None else [None] * len(queries)
        if len(instr) != len(queries):
            raise InputError(f"instructions has {len(instr)} items for {len(queries)} pairs")
        check_long_documents(long_documents)
        if max_document_tokens is not None and (not isinstance(max_document_tokens, int) or max_document_tokens < 1):
            raise InputError(f"max_document_tokens must be a positive integer, got {max_document_tokens!r}")
        truncated = np.zeros(len(queries), dtype=bool)
        if self.tokenizer is None:
            if long_documents == "chunks" or max_document_tokens is not None:
                raise InputError("long_documents='chunks' and max_document_tokens need the model's tokenizer")
            return Prompts(self.template, queries, documents, instr, None, None, truncated)
        if max_document_tokens is not None:
            documents, truncated = self._heads(documents, max_document_tokens)
        pairs = self._fit_short(queries, documents, instr, truncated)
        rest = [n for n, p in enumerate(pairs) if p is None]
        if rest:
            fitted = {key: self._fit_query(*key) for key in dict.fromkeys((queries[n], instr[n]) for n in rest)}
            for n, fitted_pair in zip(rest, self._fit_pairs([fitted[queries[n], instr[n]] for n in rest],
                                                            [documents[n] for n in rest], truncated[rest],
                                                            long_documents == "chunks")):
                pairs[n] = fitted_pair
        if any(len(p) > 1 or p[0].window for p in pairs):
            prompts = [(n, p) for n, windows in enumerate(pairs) for p in windows]
            pair_index = np.array([n for n, _ in prompts], dtype=np.int64)
        else:
            prompts, pair_index = [(n, p[0]) for n, p in enumerate(pairs)], None
        cut = np.array([p.cut for _, p in prompts], dtype=bool)
        if cut.any():
            log.info("truncated %d of %d prompts to max_length=%d tokens", cut.sum(), len(cut), self.max_length)
        return Prompts(self.template, [p.query for _, p in prompts], [p.document for _, p in prompts],
                       [p.instruction for _, p in prompts], [p.text for _, p in prompts],
                       [p.ids for _, p in prompts], cut, np.array([p.altered for _, p in prompts], dtype=bool),
                       pair_index, self.special_tokens)

    # -- fitting -----------------------------------------------------------------------------

    def _fit_short(self, queries: list[str], documents: list[str], instructions: list[str | None],
                   cuts: np.ndarray) -> list[list[_Prompt] | None]:
        """The prompts of the pairs that fit ``max_length`` as they are, encoded in one batch
        (None for the others); documents are sliced to what ``max_length`` tokens can hold, and a
        query longer than that goes the long way (``_fit_query``) without being encoded here."""
        out: list[list[_Prompt] | None] = [None] * len(queries)
        limit = self._chars(self.max_length)
        if self._segments is None:  # content may need neutralising: every pair goes the long way
            return out
        todo = [n for n, q in enumerate(queries) if len(q) <= limit]
        pieces = [documents[n][:limit] for n in todo]
        rows, texts = self._encode([queries[n] for n in todo], pieces, [instructions[n] for n in todo])
        for n, piece, row, text in zip(todo, pieces, rows, texts):
            if len(row) <= self.max_length and len(piece) == len(documents[n]):
                out[n] = [_Prompt(queries[n], piece, instructions[n], text, row, bool(cuts[n]), False)]
        return out

    def _fit_query(self, query: str, instruction: str | None) -> _Query:
        """The query of these pairs as it goes into every prompt: cut (with no room left for a
        document) only if the prompt with an empty document is over ``max_length``."""
        limit = self._chars(self.max_length)
        while True:
            piece = query[:limit]
            (q, i), altered = self._neutralised([piece, instruction])
            (ids,), (text,) = self._encode([q], [""], [i])
            if len(ids) > self.max_length or len(piece) == len(query):
                break
            limit *= 4  # characters that encode to almost nothing (a normalizer drops them): take more
        if len(ids) <= self.max_length:
            return _Query(q, i, altered, self.max_length - len(ids))
        q, _, text, ids = self._fit(q, "", i, len(ids))
        return _Query(q, i, altered, 0, _Prompt(q, "", i, text, ids, True, altered))

    def _fit_pairs(self, queries: list[_Query], documents: list[str], cuts: np.ndarray,
                   chunks: bool) -> list[list[_Prompt]]:
        """The prompts of each pair: one, cut to ``max_length`` if need be, or one per window (``chunks``).

        Documents are sliced to what their room can hold and encoded in one batch; only those
        over ``max_length`` are fitted (or windowed) one by one.
        """
        out: list[list[_Prompt]] = [[q.prompt._replace(window=chunks)] if q.prompt is not None else []
                                    for q in queries]  # a query that fills the prompt alone leaves no room
        todo = [n for n, q in enumerate(queries) if q.prompt is None]
        limits = {n: self._chars(queries[n].room) for n in todo}
        while todo:
            pieces = [documents[n][: limits[n]] for n in todo]
            neutral = [self._neutralised([piece]) for piece in pieces] if self._segments is None else \
                [([piece], False) for piece in pieces]
            rows, texts = self._encode([queries[n].text for n in todo], [d for (d,), _ in neutral],
                                       [queries[n].instruction for n in todo])
            again = []
            for n, piece, ((d,), altered), row, text in zip(todo, pieces, neutral, rows, texts):
                q = queries[n]
                if len(row) <= self.max_length and len(piece) < len(documents[n]):
                    limits[n] *= 4  # characters that encode to almost nothing (a normalizer drops them)
                    again.append(n)
                elif len(row) <= self.max_length:
                    out[n] = [_Prompt(q.text, d, q.instruction, text, row, bool(cuts[n]), altered or q.altered)]
                elif chunks and q.room > 2:
                    out[n] = self._windowed(q, self._neutralised([documents[n]])[0][0], bool(cuts[n]),
                                            altered or q.altered)
                else:
                    fitted = self._fit(q.text, d, q.instruction, len(row))
                    out[n] = [_Prompt(*fitted[:2], q.instruction, *fitted[2:], True, altered or q.altered, chunks)]
            todo = again
        return out

    def _windowed(self, query: _Query, document: str, cut: bool, altered: bool) -> list[_Prompt]:
        """One prompt per window of ``document``: windows cut at its token boundaries to fill the
        room the query leaves (a window whose edges merge differently with the template is cut)."""
        step = query.room - 2  # the window's edges may merge with the template's text into a token more
        offsets = self._offsets([document])[0]
        starts = [0] + [offsets[k][0] for k in range(step, len(offsets), step)]
        windows = [document[a:b] for a, b in zip(starts, starts[1:] + [len(document)])]
        rows, texts = self._encode([query.text] * len(windows), windows, [query.instruction] * len(windows))
        out = []
        for window, row, text in zip(windows, rows, texts):
            q, d, window_cut = query.text, window, cut
            if len(row) > self.max_length:
                q, d, text, row = self._fit(q, d, query.instruction, len(row))
                window_cut = True
            out.append(_Prompt(q, d, query.instruction, text, row, window_cut, altered, True))
        return out

    def _heads(self, texts: list[str], tokens: int) -> tuple[list[str], np.ndarray]:
        """Each text cut to its first ``tokens`` tokens (of the text alone), and whether it was cut."""
        out, cut = list(texts), np.zeros(len(texts), dtype=bool)
        todo, limit = list(range(len(texts))), self._chars(tokens)
        while todo:
            pieces = [texts[n][:limit] for n in todo]
            again = []
            for n, piece, offsets in zip(todo, pieces, self._offsets(pieces)):
                whole = len(piece) == len(texts[n])
                if not whole and len(offsets) < tokens + _MARGIN:
                    again.append(n)
                elif len(offsets) > tokens:
                    out[n], cut[n] = piece[: offsets[tokens - 1][1]], True
            todo, limit = again, limit * 4
        return out, cut

    def _chars(self, tokens: int) -> int:
        """Characters that hold at least ``tokens`` tokens and a margin (with no normalizer that
        drops characters; callers check and take more when not)."""
        return (tokens + _MARGIN) * self._token_chars

    def _neutralised(self, fields: list[str | None]) -> tuple[list[str | None], bool]:
        """``fields`` with special-token text neutralised where whole prompts are encoded, and
        whether any was; unchanged with a plan (content is encoded with special tokens split)."""
        if self._segments is not None or self.special_tokens is None:
            return fields, False
        search = self.special_tokens.search
        if not any(f and search(f) for f in fields):
            return fields, False
        return [f and neutralise_text(f, self.special_tokens) for f in fields], True

    # -- rendering ---------------------------------------------------------------------------

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
        pattern = _pattern(self._jinja(_SENTINELS["query"], _SENTINELS["document"], _SENTINELS["instruction"]))
        for q, d, i in _PROBES:
            if pattern.format(query=q, document=d, instruction=self.template.instruction(i)) != self._jinja(q, d, i):
                return None
        return pattern

    # -- encoding ----------------------------------------------------------------------------

    def _plan(self) -> list[_Segment] | None:
        """The rendered template cut at its special tokens, or None to encode whole prompts.

        The Rust tokenizer splits special tokens out before normalising and pre-tokenising
        (``AddedVocabulary::extract_and_normalize`` in huggingface/tokenizers), so the text between
        two of them is encoded independently: the template's pieces without fields are encoded
        once, the pieces with fields per pair with special tokens split, and the special tokens of
        the template go in as their ids. Special tokens that absorb whitespace strip it from their
        neighbours, as the tokenizer does. The plan is kept only if probes encode the same as
        whole prompts.
        """
        if self._format is None or self._split is None:
            return None
        specials = _special_tokens(self.tokenizer)
        rendered = self._format.format(**_SENTINELS)
        fields = [(m.start(), m.end()) for m in re.finditer("|".join(map(re.escape, _SENTINELS.values())), rendered)]
        found = [m for m in self.special_tokens.finditer(rendered)
                 if not any(a < m.end() and m.start() < b for a, b in fields)] if self.special_tokens else []
        segments: list[_Segment] = []
        start, absorbs_left = 0, False
        for m in found + [None]:
            end = m.start() if m is not None else len(rendered)
            token = specials.get(m[0]) if m is not None else None
            if m is not None and token is not None and getattr(token, "single_word", False):
                return None
            strip = (absorbs_left, bool(token is not None and token.lstrip))
            segments.append(self._segment(rendered[start:end], strip))
            if m is not None:
                segments.append(_Segment(None, (self.tokenizer.convert_tokens_to_ids(m[0]),)))
                start, absorbs_left = m.end(), bool(token is not None and token.rstrip)
        probes = [(q, d, i) for q in _EDGE_PROBES for d in _EDGE_PROBES for i in (None, q)]
        queries, documents, instructions = map(list, zip(*probes))
        if self._segmented(segments, queries, documents, instructions) != \
                self._encode_texts([self.render(*p) for p in probes]):
            log.debug("template %r: encoding around its special tokens differs; encoding whole prompts",
                      self.template.name)
            return None
        return segments

    def _segment(self, text: str, strip: tuple[bool, bool]) -> _Segment:
        if not any(s in text for s in _SENTINELS.values()):
            return _Segment(None, tuple(self._encode_split([_strip(text, strip)])[0]))
        return _Segment(_pattern(text), strip=strip)

    def _segmented(self, segments: list[_Segment], queries, documents, instructions) -> list[list[int]]:
        """Token ids of pairs from a plan: constant pieces as they are, field pieces encoded per pair."""
        instruction = self.template.instruction
        rows: list[list[int]] = [[] for _ in queries]
        for seg in segments:
            if seg.pattern is None:
                for row in rows:
                    row.extend(seg.ids)
                continue
            texts = [_strip(seg.pattern.format(query=q, document=d, instruction=instruction(i)), seg.strip)
                     for q, d, i in zip(queries, documents, instructions)]
            for row, ids in zip(rows, self._encode_split(texts)):
                row.extend(ids)
        return rows

    def _encode(self, queries: list[str], documents: list[str], instructions: list[str | None]):
        """(token ids, rendered texts) of pairs, content encoded as data.

        Without a plan (a chat template that rewrites content, or a tokenizer whose encoding
        crosses its special tokens), whole prompts are encoded: their content must have been
        neutralised first (``_neutralised``).
        """
        texts = [self.render(q, d, i) for q, d, i in zip(queries, documents, instructions)]
        if self._segments is not None:
            return self._segmented(self._segments, queries, documents, instructions), texts
        return self._encode_texts(texts), texts

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Whole prompts, the tokenizer's own way (special-token text read as special tokens)."""
        return _batch_encode(self.tokenizer, getattr(self.tokenizer, "backend_tokenizer", None), texts, split=False)

    def _encode_split(self, texts: list[str]) -> list[list[int]]:
        """Content: special-token text is encoded as the characters it is made of."""
        return _batch_encode(self.tokenizer, self._split, texts, split=True)

    def _offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Character spans of the tokens of each text, special tokens split (token boundaries to cut at)."""
        if self._split is not None:
            return [e.offsets for e in self._split.encode_batch(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True,
                              return_offsets_mapping=True)["offset_mapping"]

    def _cut(self, text: str, drop: int) -> str:
        """``text`` without its last ``drop`` tokens, cut at a token boundary (whole characters)."""
        offsets = self._offsets([text])[0]
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
                raise InputError(f"max_length={self.max_length} is too small: the prompt without query "
                                 f"and document is {length} tokens (instruction {instruction!r})")
            (ids,), (text,) = self._encode([query], [document], [instruction])
            length = len(ids)
        return query, document, text, ids


def _longest_token_chars(tokenizer: Any) -> int:
    """Characters of the longest token of ``tokenizer``'s vocabulary: an upper bound on the characters
    one token covers (byte-level tokens are at least as long as their text) unless a normalizer
    drops characters."""
    return max(1, max(map(len, tokenizer.get_vocab()), default=1))


def _pattern(text: str) -> str:
    """``text`` rendered with sentinels as a str.format pattern with the fields' names."""
    pattern = text.replace("{", "{{").replace("}", "}}")
    for field, sentinel in _SENTINELS.items():
        pattern = pattern.replace(sentinel, "{" + field + "}")
    return pattern


def _strip(text: str, strip: tuple[bool, bool]) -> str:
    if strip[0]:
        text = text.lstrip(_RUST_WHITESPACE)
    if strip[1]:
        text = text.rstrip(_RUST_WHITESPACE)
    return text


def _split_backend(tokenizer: Any | None) -> Any | None:
    """A copy of the Rust tokenizer that encodes special-token text as plain text (None: no Rust tokenizer).

    A copy, so the caller's tokenizer (which an engine may share) keeps its own setting.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        return None
    split = copy.deepcopy(backend)
    split.encode_special_tokens = True
    return split


def _batch_encode(tokenizer: Any, backend: Any | None, texts: list[str], *, split: bool) -> list[list[int]]:
    # The Rust tokenizer encodes a batch in parallel, without the Python wrapper's per-call
    # overhead and over-length warnings; encode_batch_fast (tokenizers >= 0.21) skips the offsets.
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=split,
                     return_attention_mask=False)["input_ids"]


__all__ = ["LONG_DOCUMENTS", "Labels", "LongDocuments", "PromptBuilder", "Prompts", "label_token_ids",
           "neutralise_text", "special_tokens_pattern"]

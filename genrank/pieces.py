"""Prompts without a chat template: a recipe's pieces, tokenized separately as its authors' code does.

Rerankers such as mxbai-rerank-v2, bge-reranker-v2-gemma and Qwen3-Reranker build their input ids
from parts tokenized one by one (``tokenize("query: ...") + tokenize("\\n") + ...``), which gives
other ids than tokenizing the joined text, and cut given parts to given lengths. ``PieceBuilder``
does the same from a recipe's ``[[pieces]]`` and ``[truncate]`` (genrank.templates) and returns
the ``Prompts`` the engines take, like ``PromptBuilder`` for chat recipes.

Content is data: a piece's own text is encoded with the tokenizer's special tokens, every field
(query, document, instruction) with special tokens split, so a document holding ``<|im_end|>``
gets the ids of that text. Truncation cuts token ids (each piece is encoded once per distinct
text), so its cost is linear in the input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError
from .prompts import (LONG_DOCUMENTS, Labels, LongDocuments, PromptBuilder, Prompts, _batch_encode, _split_backend,
                      label_token_ids, special_tokens_pattern)
from .templates import Piece, Template, TemplateError

log = logging.getLogger(__name__)


class PieceBuilder:
    """Builds the token ids of pairs from a recipe's pieces, cut by its rules to ``max_length``.

    ``max_length`` is what the recipe's authors call max_length (the recipe's own by default):
    each piece with ``max_share`` is cut to ``floor(max_length * max_share)`` tokens, then the
    pieces named in ``[truncate] count`` are cut to ``max_length`` plus the lengths of the pieces
    in ``plus``, from the end of the pieces in ``cut``. With ``[truncate] within_model``,
    ``max_length`` is first lowered to ``max_positions`` (the model's ``max_position_embeddings``,
    when the engine knows it) less the pieces outside ``count``. ``Prompts.texts`` are the decoded ids;
    ``Prompts.documents`` the documents before the cut.
    """

    def __init__(self, template: Template, tokenizer: Any, max_length: int | None = None,
                 max_positions: int | None = None):
        if not template.pieces:
            raise InputError(f"recipe {template.name!r} has no pieces; use PromptBuilder")
        if tokenizer is None:
            raise InputError(f"recipe {template.name!r} is built from separately tokenized pieces and needs the "
                             "model's tokenizer")
        max_length = max_length if max_length is not None else (template.max_length or 1024)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise InputError(f"max_length must be a positive integer, got {max_length!r}")
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.labels = Labels(template.labels, label_token_ids(tokenizer, template.labels))
        self.special_tokens = special_tokens_pattern(tokenizer)
        self._split = _split_backend(tokenizer)
        self._constant: dict[str, list[int]] = {}
        for piece in template.pieces:
            if piece.token == "bos":
                bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
                self._constant[piece.name] = [bos] if bos is not None and bos != pad else []
            elif not piece.fields:
                self._constant[piece.name] = self._encode_text([piece.text])[0]
            else:
                self._check_own_text(piece)
        names = [p.name for p in template.pieces]
        rule = template.truncation
        if rule.within_model and max_positions is not None:
            outside = [n for n in names if n not in rule.count]
            if any(n not in self._constant for n in outside):
                raise TemplateError(f"recipe {template.name!r}: [truncate] within_model needs the pieces outside "
                                    f"count ({outside}) to hold no fields")
            room = max_positions - sum(len(self._constant[n]) for n in outside)
            if room < max_length:
                log.info("recipe %r: max_length %d lowered to %d, what the model's %d positions leave",
                         template.name, max_length, room, max_positions)
                max_length = room
                self.max_length = room
        self._caps = {p.name: math.floor(max_length * p.max_share) for p in template.pieces if p.max_share}
        self._count = [names.index(n) for n in rule.count]
        self._plus = [names.index(n) for n in rule.plus]
        self._cut = [names.index(n) for n in rule.cut]

    def __repr__(self) -> str:
        return f"PieceBuilder(template={self.template.name!r}, max_length={self.max_length})"

    def build(self, queries: Sequence[str], documents: Sequence[str],
              instructions: Sequence[str | None] | None = None, *, long_documents: LongDocuments = "truncate",
              max_document_tokens: int | None = None) -> Prompts:
        """Token ids of a batch of pairs (already validated strings), cut by the recipe's rules."""
        queries, documents = list(queries), list(documents)
        instr = list(instructions) if instructions is not None else [None] * len(queries)
        if len(instr) != len(queries):
            raise InputError(f"instructions has {len(instr)} items for {len(queries)} pairs")
        if long_documents not in LONG_DOCUMENTS:
            raise InputError(f"long_documents must be one of {LONG_DOCUMENTS}, got {long_documents!r}")
        if long_documents == "chunks":
            raise InputError(f"long_documents='chunks' is not available with recipe {self.template.name!r}, whose "
                             "authors' code cuts long documents; use long_documents='truncate'")
        if max_document_tokens is not None and (not isinstance(max_document_tokens, int) or max_document_tokens < 1):
            raise InputError(f"max_document_tokens must be a positive integer, got {max_document_tokens!r}")
        truncated = np.zeros(len(queries), dtype=bool)
        if max_document_tokens is not None:
            for n, offsets in enumerate(self._offsets(documents)):
                if len(offsets) > max_document_tokens:
                    documents[n] = documents[n][: offsets[max_document_tokens - 1][1]]
                    truncated[n] = True
        filled = [self.template.instruction(i) for i in instr]
        parts = [self._piece_ids(p, queries, documents, filled, truncated) for p in self.template.pieces]
        rows = []
        for n in range(len(queries)):
            pieces = [part[n] for part in parts]
            if self._cut_to_fit(pieces):
                truncated[n] = True
            rows.append([t for ids in pieces for t in ids])
        if truncated.any():
            log.info("truncated %d of %d pairs to max_length=%d tokens (recipe %r)", truncated.sum(), len(rows),
                     self.max_length, self.template.name)
        texts = self._decode(rows)
        return Prompts(self.template, queries, documents, instr, texts, rows, truncated,
                       np.zeros(len(rows), dtype=bool), special_tokens=self.special_tokens)

    # -- internals ---------------------------------------------------------------------------

    def _piece_ids(self, piece: Piece, queries: list[str], documents: list[str], instructions: list[str],
                   truncated: np.ndarray) -> list[list[int]]:
        """Each pair's ids of ``piece``, cut to its cap (constant pieces are shared, not copied)."""
        if piece.name in self._constant:
            return [self._constant[piece.name]] * len(queries)
        texts = [(piece.text_with_instruction if piece.text_with_instruction is not None and i else piece.text)
                 .format(query=q, document=d, instruction=i) for q, d, i in zip(queries, documents, instructions)]
        distinct = list(dict.fromkeys(texts))  # a query or instruction repeats over its documents
        encoded = dict(zip(distinct, _batch_encode(self.tokenizer, self._split, distinct, split=True)))
        rows = [encoded[t] for t in texts]
        cap = self._caps.get(piece.name)
        if cap is not None:
            for n, ids in enumerate(rows):
                if len(ids) > cap:
                    rows[n] = ids[:cap]
                    truncated[n] = True
        return rows

    def _cut_to_fit(self, pieces: list[list[int]]) -> bool:
        """Cut the recipe's ``cut`` pieces from their end so the ``count`` pieces fit; whether it cut."""
        excess = sum(len(pieces[k]) for k in self._count) - self.max_length - sum(len(pieces[k]) for k in self._plus)
        if excess <= 0 or sum(len(pieces[k]) for k in self._cut) <= excess:
            return False  # nothing to cut, or the cut pieces cannot absorb it (the authors' code leaves them)
        for k in reversed(self._cut):
            take = min(excess, len(pieces[k]))
            pieces[k] = pieces[k][: len(pieces[k]) - take]
            excess -= take
            if not excess:
                break
        return True

    def _check_own_text(self, piece: Piece) -> None:
        """A piece with fields is encoded with special tokens split, so its own text must hold none."""
        for text in (piece.text, piece.text_with_instruction):
            own = text.format(query="", document="", instruction="") if text is not None else ""
            found = self.special_tokens.search(own) if self.special_tokens is not None else None
            if found:
                raise TemplateError(f"recipe {self.template.name!r}: piece {piece.name!r} holds fields and the "
                                    f"special token {found[0]!r}; put special tokens in pieces of their own")

    def _encode_text(self, texts: list[str]) -> list[list[int]]:
        """A recipe's own text: special-token text is read as the special tokens."""
        return _batch_encode(self.tokenizer, getattr(self.tokenizer, "backend_tokenizer", None), texts, split=False)

    def _offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        if self._split is not None:
            return [e.offsets for e in self._split.encode_batch(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True,
                              return_offsets_mapping=True)["offset_mapping"]

    def _decode(self, rows: list[list[int]]) -> list[str]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.decode_batch(rows, skip_special_tokens=False)
        return self.tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def prompt_builder(template: Template, tokenizer: Any | None, max_length: int | None,
                   prompt_format: str = "tokens", max_positions: int | None = None) -> PromptBuilder | PieceBuilder:
    """The builder for a recipe and an engine: its pieces for token ids, its chat form for chat engines.

    ``max_positions`` is the model's ``max_position_embeddings`` where the engine knows it."""
    if template.pieces and (prompt_format == "tokens" or not template.has_chat):
        if prompt_format != "tokens":
            raise InputError(f"recipe {template.name!r} is built without a chat template, from separately tokenized "
                             "pieces, so it needs an engine that takes token ids (for OpenAIEngine: "
                             "mode='completions' with the model's tokenizer)")
        return PieceBuilder(template, tokenizer, max_length, max_positions)
    return PromptBuilder(template, tokenizer, max_length if max_length is not None else (template.max_length or 1024))


__all__ = ["PieceBuilder", "prompt_builder"]

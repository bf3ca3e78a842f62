"""Checks of what callers pass in: texts, pairs, ``top_k``, ``long_documents``.

Each returns the checked value or raises ``InputError`` naming the field and the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from .errors import InputError

LongDocuments = Literal["truncate", "chunks"]
LONG_DOCUMENTS = ("truncate", "chunks")


def check_text(value: Any, what: str, *, allow_empty: bool = True) -> str:
    """``value`` if it is a string (non-blank unless ``allow_empty``), else an InputError naming ``what``."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {type(value).__name__} {value!r:.80}")
    if not allow_empty and not value.strip():
        raise InputError(f"{what} is empty")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, e.g. from a JSON "\ud83d" escape
            raise InputError(f"{what} is not valid Unicode: lone surrogate {value[e.start]!r} at character "
                             f"{e.start}") from None
    return value


def split_pairs(pairs: Iterable[Sequence[str]]) -> tuple[list[str], list[str]]:
    """Validate (query, document) pairs and return the queries and documents."""
    queries, documents = [], []
    for n, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InputError(f"pairs[{n}] must be a (query, document) pair, got {pair!r:.80}")
        queries.append(check_text(pair[0], f"pairs[{n}] query", allow_empty=False))
        documents.append(check_text(pair[1], f"pairs[{n}] document"))
    return queries, documents


def query_pairs(query: str, documents: Sequence[str]) -> list[tuple[str, str]]:
    """``(query, document)`` for each document, after checking the query and the list."""
    check_text(query, "query", allow_empty=False)
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InputError(f"documents must be a list of strings, got {type(documents).__name__} {documents!r:.80}")
    return [(query, check_text(d, f"documents[{n}]")) for n, d in enumerate(documents)]


def check_top_k(top_k: int | None) -> int | None:
    """``top_k`` if it is a positive integer or None (all)."""
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
    return top_k


def check_long_documents(long_documents: Any) -> LongDocuments:
    """``long_documents`` if it is one of ``LONG_DOCUMENTS``."""
    if long_documents not in LONG_DOCUMENTS:
        raise InputError(f"long_documents must be one of {LONG_DOCUMENTS}, got {long_documents!r}")
    return long_documents


__all__ = ["check_long_documents", "check_text", "check_top_k", "query_pairs", "split_pairs"]

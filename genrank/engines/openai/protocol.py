"""Request bodies and response parsing for OpenAI-compatible endpoints: pure functions, no I/O."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from yarl import URL  # aiohttp's URL type

from ...prompts import Labels
from .errors import Rejected, Transient, server_message

MAX_TOP_LOGPROBS = 20  # OpenAI's and vLLM's (default --max-logprobs) limit
FALLBACK_TOP_LOGPROBS = 5  # some hosted APIs allow no more
TOKEN_ID_PREFIX = "token_id:"  # vLLM's token form with return_tokens_as_token_ids

Extract = Callable[[dict], list[float]]  # a response to its (K,) label log-probs


def endpoint(base_url: str, path: str, query: Mapping[str, str], root: bool = False) -> URL:
    """``base_url/path`` with the default query (``root``: vLLM's routes outside /v1)."""
    base = re.sub(r"/v1$", "", base_url) if root else base_url
    return URL(f"{base}/{path}").update_query(query)


def request_head(model: str, *, chat: bool, label_ids: Sequence[int] | None = None,
                 continue_final_message: bool = False) -> dict[str, Any]:
    """The fields every scoring request of a call shares: one token, greedy, with log-probs.

    ``chat``: for ``/chat/completions`` (else ``/completions``). ``label_ids`` (vLLM 0.32 or
    later): ask for exactly these tokens' log-probs, named by id, instead of the top ones.
    ``continue_final_message``: the last message is an assistant prefix to continue (vLLM).
    """
    extra: dict[str, Any] = {"logprobs": True} if chat else {}
    if continue_final_message:
        extra.update(continue_final_message=True, add_generation_prompt=False)
    if label_ids is not None:
        extra.update(logprob_token_ids=list(label_ids), return_tokens_as_token_ids=True)
        if not chat:
            extra["logprobs"] = 1  # must be set with logprob_token_ids; the ids take precedence
    return {"model": model, "max_tokens": 1, "temperature": 0.0, **extra}


def request_body(head: dict[str, Any], payload: Any, *, chat: bool, top_logprobs: int | None) -> bytes:
    """One request's JSON: ``head`` with the messages (chat) or the prompt's token ids, and the top log-probs asked."""
    body = {**head, "messages" if chat else "prompt": payload}
    if top_logprobs is not None:
        body["top_logprobs" if chat else "logprobs"] = top_logprobs
    return json.dumps(body).encode()


def refuses_top_logprobs(status: int, text: str) -> bool:
    """Whether an error answer refuses the number of top log-probs asked (a 400 that names them)."""
    return status == 400 and "logprobs" in server_message(text).lower()


def extractor(labels: Labels, ids: Sequence[int] | None, raw: bool = False) -> Extract:
    """A function from a response to the (K,) label log-probs.

    Tokens are matched to labels by id when the server returns ``token_id:N`` forms, else by text
    after stripping whitespace ("7", " 7" and "7\\n" are one label, their probabilities summed);
    other tokens are ignored. A response without log-probs for the first token is rejected (the
    server ignores ``logprobs``; asking again returns the same), a malformed one is transient.
    ``raw``: the values are raw logits (``--logprobs-mode raw_logits``), matched by id and taken as
    they are; a label without one is -inf (the scorer reports that pair).
    """
    ids = tuple(ids or ())
    by_id = {f"{TOKEN_ID_PREFIX}{t}": k for k, t in enumerate(ids)}
    match = by_id if raw else {**{t.strip(): k for k, t in enumerate(labels.texts)}, **by_id}
    k_labels = len(labels.texts)

    def extract(data: dict) -> list[float]:
        values = [-math.inf if raw else 0.0] * k_labels
        try:
            for token, value in _first_token_top(data):
                k = match.get(token.strip())
                if k is None:
                    continue
                if raw:
                    values[k] = float(value)
                else:
                    values[k] += math.exp(min(float(value), 0.0))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise Transient("response has no usable first-token top logprobs") from None
        if raw:
            return values
        return [math.log(min(p, 1.0)) if p > 0.0 else -math.inf for p in values]

    return extract


def _first_token_top(data: dict) -> Iterator[tuple[str, float]]:
    """(token, value) of the first generated position's top entries, from a chat or completions answer."""
    logprobs = data["choices"][0].get("logprobs") or {}
    chat = "content" in logprobs
    first = logprobs.get("content" if chat else "top_logprobs")
    if not first:
        raise Rejected("the server returned no logprobs for the first token (does it support logprobs?)")
    if chat:  # [{"token", "logprob", "top_logprobs": [{"token", "logprob"}, ...]}, ...]
        return ((e["token"], e["logprob"]) for e in first[0]["top_logprobs"])
    return iter(first[0].items())  # completions: [{token: logprob}, ...]


def owned_by_vllm(models: dict | None) -> bool:
    """Whether a ``/models`` answer (None: no such route) names vLLM as the models' owner."""
    owners = {m.get("owned_by") for m in (models or {}).get("data", []) if isinstance(m, dict)}
    return "vllm" in owners


def returns_chosen_logprobs(vllm_version: str) -> bool:
    """Whether a vLLM version returns the log-probs of tokens named by id (``logprob_token_ids``, 0.32 or later)."""
    found = re.match(r"(\d+)\.(\d+)", vllm_version)
    return bool(found) and (int(found[1]), int(found[2])) >= (0, 32)

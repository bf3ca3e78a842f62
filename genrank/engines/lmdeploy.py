"""In-process LMDeploy driver: a ``lmdeploy.pipeline`` configured to return exact label log-probabilities.

Written against lmdeploy 0.16.0 (lmdeploy/pipeline.py, messages.py, serve/core/async_engine.py,
turbomind/turbomind.py, src/turbomind/generation/sampling.cc, pytorch/engine/logits_process.py).
LMDeploy returns ``Response.logprobs``: one dict token id -> log-probability per generated token,
holding the top ``GenerationConfig.logprobs`` tokens. What those numbers are depends on the backend:

* TurboMind computes them in the sampling kernel from the distribution *after* temperature,
  top-k, top-p and min-p filtering, so with ``do_sample=False`` (top_k forced to 1) it returns one
  log-probability only. With ``do_sample=True, temperature=1, top_k=0, top_p=1, min_p=0`` no
  filter runs and the kernel takes ``log`` of a float32 softmax over the full vocabulary, sorted:
  exact log-probabilities of the top tokens (at most 1024, TurboMind's ``kMaxLogProb``). The token
  it samples is never used (one new token only).
* The PyTorch engine computes them from the unprocessed logits only when the engine was built with
  ``PytorchEngineConfig(logprobs_mode="raw_logprobs")`` (``FusedLogitsProcessor``); greedy
  decoding then leaves them untouched.

Labels outside the returned top tokens get -inf (their mass, below that of the 1024th token, is
missing from ``label_mass``). ``include_stop_str_in_output=True`` keeps the log-probabilities when
the first token is a stop token, which LMDeploy otherwise drops.

Prompts go in as genrank's token ids, rendered and truncated by genrank with content encoded as
data: ``AsyncEngine.preprocess`` takes ``input_ids`` instead of messages (lmdeploy 0.16), and the
pipeline's own request loop (``Pipeline._infer``, what ``Pipeline.infer`` runs, with its limiter and
error responses) takes such requests. A pipeline without that path (an older LMDeploy) takes text
only: genrank's rendered text with ``do_preprocess=False``, which LMDeploy's tokenizer would read
special-token text in a document as control tokens from, so such prompts get an error entry
instead of being sent.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any

import lmdeploy
import numpy as np
from lmdeploy import GenerationConfig, PytorchEngineConfig, TurbomindEngineConfig

from ..errors import InputError
from ..prompts import Labels, Prompts
from .base import Engine, LabelLogprobs, grouped_by_query

MAX_TOP_LOGPROBS = 1024  # TurboMind's kMaxLogProb

log = logging.getLogger(__name__)


class LMDeployEngine(Engine):
    """Score prompts with an LMDeploy pipeline, either created here or the caller's own.

    ``LMDeployEngine("lightblue/lb-reranker-0.5B-v1.0")`` creates ``lmdeploy.pipeline(model,
    backend_config=...)`` with TurboMind (or the given ``backend_config``; a PyTorch one gets
    ``logprobs_mode="raw_logprobs"``) and prefix caching on. ``LMDeployEngine(pipeline=pipe)``
    reuses an existing pipeline and its tokenizer; a PyTorch-engine pipeline must have been built
    with ``logprobs_mode="raw_logprobs"``. Prompts go in as token ids (see the module docstring),
    grouped by query; results come back in input order; a prompt LMDeploy rejects (e.g. longer
    than ``session_len``) gets an error entry.
    """

    kind = "lmdeploy"
    prompt_format = "tokens"

    def __init__(self, model: str | None = None, *, pipeline: Any | None = None,
                 backend_config: TurbomindEngineConfig | PytorchEngineConfig | None = None,
                 top_logprobs: int = MAX_TOP_LOGPROBS, **pipeline_kwargs: Any):
        if (model is None) == (pipeline is None):
            raise InputError("LMDeployEngine needs exactly one of model (a name or path) or pipeline (an lmdeploy pipeline)")
        if pipeline is not None and (backend_config is not None or pipeline_kwargs):
            raise TypeError("backend_config and pipeline options only apply when LMDeployEngine creates the pipeline")
        if not isinstance(top_logprobs, int) or not 1 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise InputError(f"top_logprobs must be an integer in 1..{MAX_TOP_LOGPROBS}, got {top_logprobs!r}")
        if pipeline is None:
            pipeline = lmdeploy.pipeline(model, backend_config=_exact_backend_config(backend_config), **pipeline_kwargs)
        self.pipeline = pipeline
        config = pipeline.backend_config
        if isinstance(config, PytorchEngineConfig) and config.logprobs_mode != "raw_logprobs":
            raise InputError(f"the pipeline's PytorchEngineConfig has logprobs_mode={config.logprobs_mode!r}; genrank "
                             "needs 'raw_logprobs' (log-probabilities of the unprocessed logits)")
        self.backend = "pytorch" if isinstance(config, PytorchEngineConfig) else "turbomind"
        self.top_logprobs = top_logprobs
        self._tokenizer = pipeline.async_engine.tokenizer.model.model  # lmdeploy Tokenizer -> HF tokenizer
        self.takes_token_ids = _takes_token_ids(pipeline)
        if not self.takes_token_ids:
            log.warning("this LMDeploy pipeline takes text only (no AsyncEngine.preprocess(input_ids=...)); prompts "
                        "whose content holds special-token text get an error entry instead of being sent")
            bos = self._tokenizer.bos_token
            self._bos = bos if bos and self._tokenizer.bos_token_id in self._tokenizer.encode("") else ""

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def model_name(self) -> str:
        """The model's name or path, as the pipeline loaded it."""
        return str(getattr(self.pipeline.async_engine, "model_name", None) or self._tokenizer.name_or_path)

    @property
    def scoring_method(self) -> str:
        """The top log-probabilities read (labels outside them count 0)."""
        return f"top_logprobs={self.top_logprobs}"

    def __repr__(self) -> str:
        return f"LMDeployEngine(backend={self.backend!r}, top_logprobs={self.top_logprobs})"

    def generation_config(self) -> GenerationConfig:
        """One new token; log-probabilities over the full vocabulary (see the module docstring)."""
        common = dict(max_new_tokens=1, logprobs=self.top_logprobs, include_stop_str_in_output=True)
        if self.backend == "pytorch":
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                repetition_penalty=1.0, random_seed=0, **common)

    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        if prompts.token_ids is None or labels.token_ids is None:
            raise InputError("LMDeployEngine needs tokenized prompts and label token ids")
        values = np.full((len(prompts), len(labels.token_ids)), -np.inf)
        errors: dict[int, str] = {}
        if self.takes_token_ids:
            order = grouped_by_query(prompts)
            responses = self._infer_token_ids([prompts.token_ids[i] for i in order])
        else:
            errors = {i: "this LMDeploy takes prompts as text, and the content holds special-token text it would "
                         "read as control tokens; upgrade to lmdeploy >= 0.16" for i in prompts.holding_special_tokens()}
            order = [i for i in grouped_by_query(prompts) if i not in errors]
            texts = [self._without_bos(prompts.texts[i]) for i in order]
            responses = self.pipeline(texts, gen_config=self.generation_config(), do_preprocess=False) if texts else []
        for i, response in zip(order, responses):
            if response.finish_reason == "error" or not response.logprobs:
                errors[i] = f"LMDeploy returned no log-probabilities ({_error_text(response)})"
                continue
            first = response.logprobs[0]  # token id -> log-probability at the first generated position
            values[i] = [first.get(t, -np.inf) for t in labels.token_ids]
        return LabelLogprobs(values, errors)

    def _infer_token_ids(self, rows: list[list[int]]) -> list[Any]:
        """One ``Response`` per row of token ids, through the pipeline's request loop (as ``Pipeline.infer``)."""
        config = self.generation_config()
        requests = (dict(session_id=self.pipeline.session_mgr.get(), messages=None, input_ids=list(ids),
                         gen_config=config, stream_response=False) for ids in rows)
        responses = []
        for parts in self.pipeline._infer(requests, multiplex=False):
            response = None
            for part in parts:
                response = response.extend(part) if response else part
            responses.append(response)
        return responses

    def _without_bos(self, text: str) -> str:
        """``text`` without a leading BOS that LMDeploy's tokenizer adds again (``encode(add_bos=True)``)."""
        return text[len(self._bos):] if self._bos and text.startswith(self._bos) else text


def _takes_token_ids(pipeline: Any) -> bool:
    """Whether the pipeline's engine takes token ids (``AsyncEngine.preprocess(input_ids=...)``, lmdeploy 0.16)."""
    preprocess = getattr(pipeline.async_engine, "preprocess", None)
    return (callable(getattr(pipeline, "_infer", None)) and hasattr(pipeline, "session_mgr") and callable(preprocess)
            and "input_ids" in inspect.signature(preprocess).parameters)


def _exact_backend_config(config: TurbomindEngineConfig | PytorchEngineConfig | None):
    if config is None:
        return TurbomindEngineConfig(enable_prefix_caching=True)
    if isinstance(config, PytorchEngineConfig):
        return dataclasses.replace(config, logprobs_mode="raw_logprobs")
    return config


def _error_text(response: Any) -> str:
    message = getattr(response, "error_message", None)
    return message or f"finish_reason={response.finish_reason!r}"

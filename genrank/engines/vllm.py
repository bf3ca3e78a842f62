"""In-process vLLM driver: genrank's tokenised prompts into a ``vllm.LLM``, label log-probabilities out.

Two ways to read the labels, chosen by the ``LLM``'s runner:

* generate (the default): one greedy token per prompt with ``SamplingParams.logprob_token_ids`` set
  to the label tokens (vLLM >= 0.32), which returns each label's log-probability under a float32
  log-softmax over the full vocabulary (``Sampler.gather_specific_token_logprobs`` over
  ``Sampler.compute_logprobs``, vllm/v1/sample/sampler.py). On an older vLLM the top-k
  log-probabilities are read instead (k = the engine's ``max_logprobs``, 20 by default) and labels
  outside the top k get -inf; their mass is missing from ``label_mass``.
* pooling (``runner="pooling"``): the LM head is cut down to the label rows
  (``hf_overrides`` ``classifier_from_token`` = the labels, ``method="no_post_processing"``,
  vllm/model_executor/models/adapters.py) and ``LLM.classify`` returns a softmax over the labels
  only, with the head in float32. The values are the label log-probabilities *renormalised over
  the labels*: the label mass is always 1, and ``normalize=False`` gives the same scores as the
  default. On CPU (tiny model, 2 loaded cores) it ran 1.0-1.4x the generate path's pairs/s;
  benchmarks/bench_vllm.py measures both on a GPU. The generate path is the exact one.

Raw logits (recipes scored by one label's logit, e.g. bge-reranker-v2-gemma): an ``LLM`` made with
``logprobs_mode="raw_logits"`` returns, for ``logprob_token_ids``, the label tokens' raw logits
(before any logits processor) instead of their log-probabilities; the engine then answers
``Labels(kind="logits")`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import vllm
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from ..errors import InputError
from ..prompts import Labels, Prompts
from .base import Engine, LabelLogprobs, grouped_by_query
from .loading import cache_only

log = logging.getLogger(__name__)

# SamplingParams is a msgspec Struct; the field arrived in vLLM 0.32.
_HAS_LABEL_IDS = "logprob_token_ids" in getattr(SamplingParams, "__struct_fields__", ())


class VLLMEngine(Engine):
    """Score prompts with a ``vllm.LLM``, either created here or the caller's own.

    ``VLLMEngine("lightblue/lb-reranker-0.5B-v1.0", dtype="bfloat16")`` creates ``vllm.LLM(model,
    **vllm_kwargs)``; ``method="pooling"`` creates it with ``runner="pooling"`` once the labels are
    known (at the first call). ``VLLMEngine(llm=llm)`` reuses an existing ``LLM`` and its tokenizer;
    a pooling ``LLM`` must have been built with
    ``hf_overrides=VLLMEngine.pooling_overrides(tokenizer, labels)``.

    Prompts are submitted grouped by query (stable), so vLLM's prefix cache can reuse each query's
    system+query prefix; results come back in input order. Prompts longer than the ``LLM``'s
    ``max_model_len`` get an error entry instead of failing the batch.
    """

    kind = "vllm"
    prompt_format = "tokens"
    raw_logits_options = {"logprobs_mode": "raw_logits"}  # what makes the LLM return raw logits
    raw_logits_hint = ("Create the vllm.LLM with logprobs_mode='raw_logits' (VLLMEngine(model, "
                       "logprobs_mode='raw_logits'); Reranker(model, engine='vllm') does so for such a recipe")

    def __init__(self, model: str | None = None, *, llm: vllm.LLM | None = None,
                 method: Literal["generate", "pooling"] | None = None, **vllm_kwargs: Any):
        if (model is None) == (llm is None):
            raise InputError("VLLMEngine needs exactly one of model (a name or path) or llm (a vllm.LLM)")
        if llm is not None and vllm_kwargs:
            raise TypeError(f"vLLM options {sorted(vllm_kwargs)} were given with an existing llm; "
                            "they only apply when VLLMEngine creates the LLM")
        if method not in (None, "generate", "pooling"):
            raise InputError(f"method must be 'generate' or 'pooling', got {method!r}")
        self._llm = llm
        self._model = model
        self._kwargs = vllm_kwargs
        if llm is not None:
            runner = llm.llm_engine.model_config.runner_type
            if method is not None and method != runner:
                raise InputError(f"method={method!r} does not match the llm, which was built with runner={runner!r}")
            if runner not in ("generate", "pooling"):
                raise InputError(f"the llm was built with runner={runner!r}; genrank needs 'generate' or 'pooling'")
            self.method = runner
            self._tokenizer = llm.get_tokenizer()
            if runner == "generate":
                self._check_generate_llm()
        else:
            self.method = method or "generate"
            # fails within seconds, in one line, when the model cannot be fetched (vLLM reads a cached one itself)
            cache_only(model, revision=vllm_kwargs.get("revision"))
            if self.method == "generate":
                self._llm = vllm.LLM(model, **vllm_kwargs)
                self._check_generate_llm()
                self._tokenizer = self._llm.get_tokenizer()
            else:  # the pooling LLM needs the label tokens, which come with the first call
                from vllm.tokenizers import get_tokenizer

                self._tokenizer = get_tokenizer(
                    vllm_kwargs.get("tokenizer") or model,
                    trust_remote_code=vllm_kwargs.get("trust_remote_code", False),
                    revision=vllm_kwargs.get("tokenizer_revision") or vllm_kwargs.get("revision"))

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def model_name(self) -> str:
        """The model's name or path, as loaded."""
        return self._llm.llm_engine.model_config.model if self._llm is not None else self._model

    @property
    def scoring_method(self) -> str:
        """"pooling" (renormalised over the labels), "logprob_token_ids" (exact), or "top_logprobs=K" (older vLLM)."""
        if self.method == "pooling":
            return "pooling"
        return "logprob_token_ids" if _HAS_LABEL_IDS else f"top_logprobs={self._llm.llm_engine.model_config.max_logprobs}"

    @property
    def max_positions(self) -> int | None:
        """The model's ``max_position_embeddings`` (some recipes fit their prompts to it); None before a pooling LLM exists."""
        if self._llm is None:
            return None
        return getattr(self._llm.llm_engine.model_config.hf_text_config, "max_position_embeddings", None)

    @property
    def label_kinds(self) -> tuple[str, ...]:
        """("logits",) for a generate LLM made with logprobs_mode="raw_logits", else ("logprobs",)."""
        if self.method == "generate" and self._logprobs_mode() == "raw_logits":
            return ("logits",)
        return ("logprobs",)

    @property
    def llm(self) -> vllm.LLM | None:
        """The underlying ``vllm.LLM`` (None for method="pooling" before the first call)."""
        return self._llm

    def __repr__(self) -> str:
        return f"VLLMEngine(model={self.model_name!r}, method={self.method!r})"

    @staticmethod
    def pooling_overrides(tokenizer: Any, labels: Labels) -> dict[str, Any]:
        """``hf_overrides`` that turn a causal LM's head into a classifier over ``labels``."""
        if labels.token_ids is None:
            raise InputError("pooling needs the label token ids")
        return {"classifier_from_token": tokenizer.convert_ids_to_tokens(list(labels.token_ids)),
                "method": "no_post_processing"}

    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        ids = prompts.token_ids
        if ids is None or labels.token_ids is None:
            raise InputError("VLLMEngine needs tokenized prompts and label token ids")
        if labels.kind not in self.label_kinds:
            raise InputError(f"this vLLM engine returns label {self.label_kinds[0]}, not {labels.kind}"
                             + (f". {self.raw_logits_hint}" if labels.kind == "logits" else
                                "; create the LLM without logprobs_mode='raw_logits'"))
        llm = self._ready(labels)
        values = np.full((len(ids), len(labels.token_ids)), -np.inf)
        errors: dict[int, str] = {}
        limit = llm.llm_engine.model_config.max_model_len
        if self.method == "generate":
            limit -= 1  # room for the generated token
        for i, row in enumerate(ids):
            if len(row) > limit:
                errors[i] = (f"prompt is {len(row)} tokens, more than the vLLM engine takes ({limit}); "
                             f"lower max_length or raise max_model_len")
        order = [i for i in grouped_by_query(prompts) if i not in errors]
        if not order:
            return LabelLogprobs(values, errors, kind=labels.kind)
        batch = [TokensPrompt(prompt_token_ids=list(ids[i])) for i in order]
        if self.method == "generate":
            outputs = llm.generate(batch, self._sampling_params(labels), use_tqdm=False)
            for i, out in zip(order, outputs):
                row = _read_generated(out, labels.token_ids)
                if isinstance(row, str):
                    errors[i] = row
                else:
                    values[i] = row
        else:
            outputs = llm.classify(batch, use_tqdm=False)
            with np.errstate(divide="ignore"):
                values[order] = np.log(np.array([o.outputs.probs for o in outputs], dtype=np.float64))
        return LabelLogprobs(values, errors, kind=labels.kind)

    # -- internals ---------------------------------------------------------------------------

    def _ready(self, labels: Labels) -> vllm.LLM:
        """The LLM to run, creating the pooling one for these labels on first use."""
        if self.method == "generate":
            return self._llm
        wanted = self.pooling_overrides(self._tokenizer, labels)
        if self._llm is None:
            kwargs = dict(self._kwargs)
            kwargs["hf_overrides"] = {**kwargs.get("hf_overrides", {}), **wanted}
            kwargs.setdefault("convert", "classify")  # any *ForCausalLM becomes *ForSequenceClassification
            self._llm = vllm.LLM(self._model, runner="pooling", **kwargs)
        config = self._llm.llm_engine.model_config.hf_config.get_text_config()
        have = getattr(config, "classifier_from_token", None)
        if list(have or ()) != wanted["classifier_from_token"] or getattr(config, "method", None) != "no_post_processing":
            raise InputError(f"the pooling llm classifies tokens {have!r}, not the labels "
                             f"{wanted['classifier_from_token']!r}; build it with "
                             "hf_overrides=VLLMEngine.pooling_overrides(tokenizer, labels)")
        return self._llm

    def _logprobs_mode(self) -> str:
        return getattr(self._llm.llm_engine.model_config, "logprobs_mode", "raw_logprobs")

    def _check_generate_llm(self) -> None:
        config = self._llm.llm_engine.model_config
        mode = self._logprobs_mode()
        if mode not in ("raw_logprobs", "raw_logits"):
            raise InputError(f"the llm was built with logprobs_mode={mode!r}; genrank needs 'raw_logprobs' "
                             "(vLLM's default: log-probabilities before any logits processor) or 'raw_logits' "
                             "(for recipes scored by a raw logit)")
        if not _HAS_LABEL_IDS:
            log.warning("this vLLM has no SamplingParams.logprob_token_ids (added in 0.32); reading the top-%d "
                        "log-probabilities, so labels outside them count 0 (see label_mass)", config.max_logprobs)

    def _sampling_params(self, labels: Labels) -> SamplingParams:
        if _HAS_LABEL_IDS:
            return SamplingParams(temperature=0.0, max_tokens=1, detokenize=False,
                                  logprob_token_ids=list(labels.token_ids))
        top = self._llm.llm_engine.model_config.max_logprobs  # the most this engine allows (default 20)
        return SamplingParams(temperature=0.0, max_tokens=1, detokenize=False, logprobs=top)


def _read_generated(out: Any, label_ids: Sequence[int]) -> np.ndarray | str:
    """Label log-probabilities from one ``RequestOutput``, or why there are none."""
    if not out.outputs or out.outputs[0].finish_reason == "error":
        return "vLLM failed on this prompt"
    if not out.outputs[0].logprobs:
        return "vLLM returned no log-probabilities for this prompt"
    first = out.outputs[0].logprobs[0]  # token id -> Logprob at the first generated position
    return np.array([first[t].logprob if t in first else -np.inf for t in label_ids], dtype=np.float64)

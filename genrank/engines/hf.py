"""In-process transformers driver: the embedded default, on CPU (float32) or GPU (bf16)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..prompts import Labels, Prompts
from .base import LabelLogprobs

log = logging.getLogger(__name__)


class TransformersEngine:
    """Prefill-only scoring with a transformers causal LM.

    Prompts are sorted by length and cut into batches whose padded size stays under
    ``max_batch_tokens``; rows are right-padded and run without an attention mask (causal
    attention already hides trailing pads from the real tokens). Only the hidden state at each
    row's last real token goes through the LM head and the model's own logit scaling or
    soft-capping, in float32, for an exact log-softmax over the vocabulary. Batches are queued
    without waiting for the device, and the results come back in one copy per call. A batch that
    runs out of GPU memory is halved and retried. ``compile=True`` runs the decoder through
    ``torch.compile(dynamic=True)``. ``dtype`` (a torch dtype or its name) and ``from_pretrained``
    options apply only when loading a model by name.
    """

    prompt_format = "tokens"

    def __init__(self, model: str | PreTrainedModel, *, tokenizer: Any | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                 max_batch_tokens: int | None = None, max_batch_size: int = 512, compile: bool = False,
                 trust_remote_code: bool = False, **from_pretrained: Any):
        self.device = torch.device(device) if device is not None else _default_device()
        if isinstance(model, PreTrainedModel):
            if dtype is not None or from_pretrained:
                given = ["dtype"] * (dtype is not None) + sorted(from_pretrained)
                raise TypeError(f"dtype and from_pretrained options apply only when loading a model by name; "
                                f"got {given} with a loaded {type(model).__name__}")
            self.model = model
            name = model.name_or_path
        else:
            if isinstance(dtype, str):
                if not isinstance(getattr(torch, dtype, None), torch.dtype):
                    raise ValueError(f"dtype must be a torch dtype or its name such as 'bfloat16', got {dtype!r}")
                dtype = getattr(torch, dtype)
            name = model
            self.model = AutoModelForCausalLM.from_pretrained(
                model, dtype=dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32),
                trust_remote_code=trust_remote_code, **from_pretrained)
        self.model.to(self.device).eval()
        self._tokenizer = tokenizer or AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        self.max_batch_tokens = max_batch_tokens or (65536 if self.device.type == "cuda" else 8192)
        self.max_batch_size = max_batch_size
        self._decoder = self.model.get_decoder()
        if compile:  # one graph for all batch shapes; pays off on GPU for long jobs
            self._decoder = torch.compile(self._decoder, dynamic=True)
        head = self.model.get_output_embeddings()
        # The head runs on one position per row, so keep a float32 copy for an exact log-softmax.
        self._head_weight = head.weight.detach().float()
        self._head_bias = None if getattr(head, "bias", None) is None else head.bias.detach().float()
        self._logit_scale, self._softcap = _logit_transform(self.model.config)
        pad = self._tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else (self._tokenizer.eos_token_id or 0)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def model_name(self) -> str:
        """The model's name or path, as loaded."""
        return self.model.name_or_path

    def __repr__(self) -> str:
        return f"TransformersEngine(model={self.model.name_or_path!r}, device={str(self.device)!r}, dtype={self.model.dtype})"

    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        ids = prompts.token_ids
        if ids is None or labels.token_ids is None:
            raise ValueError("TransformersEngine needs tokenized prompts and label token ids")
        label_ids = torch.tensor(labels.token_ids, device=self.device)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch finds OOM early
        # Batches are queued without waiting for the device; results come back in one copy at the end.
        done: list[tuple[np.ndarray, torch.Tensor]] = []
        start = 0
        while start < len(order):
            size = self._batch_size(int(lengths[order[start]]))
            rows = order[start:start + size]
            try:
                done.append((rows, self._forward([ids[i] for i in rows], lengths[rows], label_ids)))
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                self.max_batch_tokens = max(self.max_batch_tokens // 2, int(lengths[order[start]]))
                self.max_batch_size = max(self.max_batch_size // 2, 1)
                log.warning("out of memory; halving batches to %d tokens / %d rows",
                            self.max_batch_tokens, self.max_batch_size)
                torch.cuda.empty_cache()
                continue
            start += len(rows)
        out = np.empty((len(ids), len(label_ids)), dtype=np.float64)
        if done:
            out[np.concatenate([rows for rows, _ in done])] = torch.cat([v for _, v in done]).cpu().numpy()
        return LabelLogprobs(out)

    def _batch_size(self, longest: int) -> int:
        return max(1, min(self.max_batch_size, self.max_batch_tokens // max(longest, 1)))

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]], lengths: np.ndarray, label_ids: torch.Tensor) -> torch.Tensor:
        """The (rows, labels) log-probabilities of one batch, left on the device."""
        batch = np.full((len(rows), int(lengths.max())), self._pad_id, dtype=np.int64)
        batch[np.arange(batch.shape[1]) < lengths[:, None]] = np.fromiter(
            itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        inputs = torch.from_numpy(np.concatenate([batch.ravel(), lengths - 1]))
        if self.device.type == "cuda":
            inputs = inputs.pin_memory()  # lets the copy below run without blocking the host
        inputs = inputs.to(self.device, non_blocking=True)
        batch, last = inputs[: batch.size].view(batch.shape), inputs[batch.size:]
        hidden = self._decoder(input_ids=batch, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(rows), device=self.device), last]
        logits = torch.nn.functional.linear(last.float(), self._head_weight, self._head_bias) * self._logit_scale
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return torch.log_softmax(logits, dim=-1)[:, label_ids]


def _logit_transform(config: Any) -> tuple[float, float | None]:
    """(scale, cap): the model's forward turns head logits x into ``cap * tanh(scale * x / cap)`` or ``scale * x``.

    As the CausalLM forwards of transformers 5.19 do: Cohere multiplies by ``logit_scale``, Granite
    and MiniCPM3 divide by ``logits_scaling`` (HyperCLOVA X multiplies by it), Falcon-H1 multiplies
    by ``lm_head_multiplier``; Gemma 2-4 cap with ``final_logit_softcapping``.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kind = getattr(text, "model_type", "")
    scale = float(getattr(text, "lm_head_multiplier", None) or 1.0)
    if kind.startswith("cohere") and getattr(text, "logit_scale", None) is not None:
        scale *= text.logit_scale
    if getattr(text, "logits_scaling", None):
        scale = scale * text.logits_scaling if kind.startswith("hyperclovax") else scale / text.logits_scaling
    return scale, getattr(text, "final_logit_softcapping", None)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

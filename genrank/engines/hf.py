"""In-process transformers driver: the embedded default, on CPU (float32) or GPU (bf16)."""

from __future__ import annotations

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
    row's last real token goes through the LM head, in float32, for an exact log-softmax over the
    vocabulary. A batch that runs out of GPU memory is halved and retried. ``compile=True`` runs
    the decoder through ``torch.compile(dynamic=True)``.
    """

    prompt_format = "tokens"

    def __init__(self, model: str | PreTrainedModel, *, tokenizer: Any | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                 max_batch_tokens: int | None = None, max_batch_size: int = 512, compile: bool = False,
                 trust_remote_code: bool = False, **from_pretrained: Any):
        self.device = torch.device(device) if device is not None else _default_device()
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if isinstance(model, PreTrainedModel):
            self.model = model
            name = model.name_or_path
        else:
            name = model
            self.model = AutoModelForCausalLM.from_pretrained(
                model, dtype=dtype, trust_remote_code=trust_remote_code, **from_pretrained)
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
        pad = self._tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else (self._tokenizer.eos_token_id or 0)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def __repr__(self) -> str:
        return f"TransformersEngine(model={self.model.name_or_path!r}, device={str(self.device)!r}, dtype={self.model.dtype})"

    def label_logprobs(self, prompts: Prompts, labels: Labels) -> LabelLogprobs:
        ids = prompts.token_ids
        if ids is None or labels.token_ids is None:
            raise ValueError("TransformersEngine needs tokenized prompts and label token ids")
        label_ids = torch.tensor(labels.token_ids, device=self.device)
        out = np.empty((len(ids), len(label_ids)), dtype=np.float64)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch finds OOM early
        start = 0
        while start < len(order):
            size = self._batch_size(int(lengths[order[start]]))
            rows = order[start:start + size]
            try:
                out[rows] = self._forward([ids[i] for i in rows], label_ids)
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
        return LabelLogprobs(out)

    def _batch_size(self, longest: int) -> int:
        return max(1, min(self.max_batch_size, self.max_batch_tokens // max(longest, 1)))

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]], label_ids: torch.Tensor) -> np.ndarray:
        lengths = torch.tensor([len(r) for r in rows])
        batch = torch.full((len(rows), int(lengths.max())), self._pad_id, dtype=torch.long)
        for n, r in enumerate(rows):
            batch[n, : len(r)] = torch.as_tensor(r)
        batch = batch.to(self.device, non_blocking=True)
        hidden = self._decoder(input_ids=batch, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(rows), device=self.device), lengths.to(self.device) - 1]
        logits = torch.nn.functional.linear(last.float(), self._head_weight, self._head_bias)
        logprobs = torch.log_softmax(logits, dim=-1)[:, label_ids]
        return logprobs.double().cpu().numpy()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

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
from .loading import pretrained

log = logging.getLogger(__name__)


class TransformersEngine:
    """Prefill-only scoring with a transformers causal LM.

    Prompts are sorted by length and cut into batches whose padded size stays under
    ``max_batch_tokens``; rows are right-padded and run without an attention mask (causal
    attention already hides trailing pads from the real tokens). Only the hidden state at each
    row's last real token goes through the LM head, in float32, for an exact log-softmax over the
    vocabulary. At load a probe prompt checks that the LM head alone gives the model's own logits;
    a model whose forward transforms them after the head (Gemma's soft-capping, Cohere's and
    Granite's scaling, remote code) is run through its whole forward instead, left-padded with
    an attention mask, keeping only the last position's logits. Batches are queued
    without waiting for the device, and the results come back in one copy per call. A batch that
    runs out of GPU memory is halved and retried. ``compile=True`` runs the decoder through
    ``torch.compile(dynamic=True)``. ``dtype`` (a torch dtype or its name) and ``from_pretrained``
    options apply only when loading a model by name.
    """

    prompt_format = "tokens"
    label_kinds = ("logprobs", "logits")

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
            self.model = pretrained(
                AutoModelForCausalLM.from_pretrained, model,
                dtype=dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32),
                trust_remote_code=trust_remote_code, **from_pretrained)
        self.model.to(self.device).eval()
        self._tokenizer = tokenizer or pretrained(AutoTokenizer.from_pretrained, name, filename="tokenizer_config.json",
                                                   trust_remote_code=trust_remote_code)
        self.max_batch_tokens = max_batch_tokens or (65536 if self.device.type == "cuda" else 8192)
        self.max_batch_size = max_batch_size
        self._decoder = self.model.get_decoder()
        if compile:  # one graph for all batch shapes; pays off on GPU for long jobs
            self._decoder = torch.compile(self._decoder, dynamic=True)
        pad = self._tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else (self._tokenizer.eos_token_id or 0)
        self.whole_forward = not self._head_gives_the_models_logits()
        if self.whole_forward:
            log.info("%s: the model's forward changes the LM head's logits; scoring through its whole forward", name)
        else:  # the head runs on one position per row, so keep a float32 copy for an exact log-softmax
            head = self.model.get_output_embeddings()
            self._head_weight = head.weight.detach().float()
            self._head_bias = None if getattr(head, "bias", None) is None else head.bias.detach().float()

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_positions(self) -> int | None:
        """The model's ``max_position_embeddings`` (some recipes fit their prompts to it)."""
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

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
        raw = labels.kind == "logits"
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch finds OOM early
        # Batches are queued without waiting for the device; results come back in one copy at the end.
        done: list[tuple[np.ndarray, torch.Tensor]] = []
        start = 0
        while start < len(order):
            size = self._batch_size(int(lengths[order[start]]))
            rows = order[start:start + size]
            try:
                done.append((rows, self._forward([ids[i] for i in rows], lengths[rows], label_ids, raw)))
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
        return LabelLogprobs(out, kind=labels.kind)

    def _batch_size(self, longest: int) -> int:
        return max(1, min(self.max_batch_size, self.max_batch_tokens // max(longest, 1)))

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]], lengths: np.ndarray, label_ids: torch.Tensor,
                 raw: bool = False) -> torch.Tensor:
        """The (rows, labels) log-probabilities (``raw``: logits) of one batch, left on the device."""
        if self.whole_forward:
            return self._forward_whole(rows, lengths, label_ids, raw)
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
        logits = torch.nn.functional.linear(last.float(), self._head_weight, self._head_bias)
        return _label_values(logits, label_ids, raw)

    def _forward_whole(self, rows: list[list[int]], lengths: np.ndarray, label_ids: torch.Tensor,
                       raw: bool = False) -> torch.Tensor:
        """The model's own forward: left-padded rows, an attention mask, the last position's logits."""
        width = int(lengths.max())
        mask = np.arange(width) >= (width - lengths)[:, None]
        batch = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        batch[mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        mask = torch.from_numpy(mask).to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=torch.from_numpy(batch).to(self.device), attention_mask=mask.long(),
                            position_ids=positions, use_cache=False, logits_to_keep=1).logits[:, -1]
        return _label_values(logits.float(), label_ids, raw)

    @torch.inference_mode()
    def _head_gives_the_models_logits(self) -> bool:
        """Whether the LM head on the last hidden state gives the logits of the model's forward, on a probe."""
        ids = self._tokenizer.encode("Is this passage relevant to the query? Answer with a digit: 7",
                                     add_special_tokens=False)
        batch = torch.tensor([ids], device=self.device)
        forward = self.model(input_ids=batch, use_cache=False, logits_to_keep=1).logits[0, -1]
        hidden = self.model.get_decoder()(input_ids=batch, use_cache=False).last_hidden_state[0, -1]
        head = self.model.get_output_embeddings()(hidden)
        tolerance = 1e-5 if self.model.dtype in (torch.float32, torch.float64) else 2e-2
        return torch.allclose(head.float(), forward.float(), rtol=tolerance, atol=tolerance)


def _label_values(logits: torch.Tensor, label_ids: torch.Tensor, raw: bool) -> torch.Tensor:
    """The labels' raw logits, or their log-probabilities over the full vocabulary."""
    return logits[:, label_ids] if raw else torch.log_softmax(logits, dim=-1)[:, label_ids]


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

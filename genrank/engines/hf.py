"""In-process transformers driver: the embedded default, on CPU (float32) or GPU (bf16)."""

from __future__ import annotations

import inspect
import itertools
import logging
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..errors import InputError
from ..prompts import Labels, Prompts
from .base import Engine, LabelLogprobs
from .loading import pretrained
from .prefix import PrefixGroup, SharedPrefixCache, Wave, plan_waves, prefix_groups

log = logging.getLogger(__name__)


class TransformersEngine(Engine):
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

    Shared prefixes (``share_prefix=True``, the default): the prompts of one (query, instruction)
    that share at least ``MIN_SHARED_PREFIX`` leading tokens (the template's start and the query,
    found from the token ids) run that prefix once, batched with other queries' prefixes; their
    suffixes then run as batches that attend to the prefix's keys and values (genrank/engines/prefix.py).
    The scores equal the unshared path's. A load-time probe checks that the model's cache gives
    the same logits this way; models that fail it (sliding-window or linear-attention layers,
    remote code) and models scored through their whole forward keep the unshared way.
    """

    kind = "hf"
    MIN_SHARED_PREFIX = 16  # tokens; shorter prefixes save too little to be worth a batch of their own
    MIN_SHARED_ROWS = 2  # prompts of one query
    prompt_format = "tokens"
    scoring_method = "full_vocabulary"  # an exact float32 log-softmax over the whole vocabulary
    label_kinds = ("logprobs", "logits")

    def __init__(self, model: str | PreTrainedModel, *, tokenizer: Any | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                 max_batch_tokens: int | None = None, max_batch_size: int = 512, compile: bool = False,
                 share_prefix: bool = True, trust_remote_code: bool = False, **from_pretrained: Any):
        if not isinstance(share_prefix, bool):
            raise InputError(f"share_prefix must be true or false, got {share_prefix!r}")
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
                    raise InputError(f"dtype must be a torch dtype or its name such as 'bfloat16', got {dtype!r}")
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
        # transformers 5.2x renamed the decoder's ``past_key_values`` (argument and output) to ``cache``;
        # the old name warns on every call
        self._cache_name = "cache" if "cache" in inspect.signature(self._decoder.forward).parameters \
            else "past_key_values"
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
        self.share_prefix = share_prefix and not self.whole_forward and self._prefix_sharing_gives_the_same_logits()

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
            raise InputError("TransformersEngine needs tokenized prompts and label token ids")
        label_ids = torch.tensor(labels.token_ids, device=self.device)
        raw = labels.kind == "logits"
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        if self.share_prefix:
            groups, alone = prefix_groups(prompts, min_rows=self.MIN_SHARED_ROWS, min_prefix=self.MIN_SHARED_PREFIX)
        else:
            groups, alone = [], np.arange(len(ids))
        # Batches are queued without waiting for the device; results come back in one copy at the end.
        done = self._shared(ids, lengths, groups, label_ids, raw) + self._unshared(ids, lengths, alone, label_ids, raw)
        out = np.empty((len(ids), len(label_ids)), dtype=np.float64)
        if done:
            out[np.concatenate([rows for rows, _ in done])] = torch.cat([v for _, v in done]).cpu().numpy()
        return LabelLogprobs(out, kind=labels.kind)

    def _unshared(self, ids: list[list[int]], lengths: np.ndarray, rows: np.ndarray,
                  label_ids: torch.Tensor, raw: bool) -> list[tuple[np.ndarray, torch.Tensor]]:
        """Whole prompts ``rows``, in batches of similar lengths."""
        order = rows[np.argsort(-lengths[rows], kind="stable")]  # longest first: the first batch finds OOM early
        done = []
        start = 0
        while start < len(order):
            longest = int(lengths[order[start]])
            size = max(1, min(self.max_batch_size, self.max_batch_tokens // max(longest, 1)))
            batch = order[start:start + size]
            try:
                done.append((batch, self._forward([ids[i] for i in batch], lengths[batch], label_ids, raw)))
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                self._halve_batches(longest)
                continue
            start += len(batch)
        return done

    def _shared(self, ids: list[list[int]], lengths: np.ndarray, groups: list[PrefixGroup],
                label_ids: torch.Tensor, raw: bool) -> list[tuple[np.ndarray, torch.Tensor]]:
        """Prompts that share a prefix, one wave of prefixes at a time (see genrank/engines/prefix.py)."""
        done = []
        waves = plan_waves(groups, lengths, self.max_batch_tokens, self.max_batch_size)
        while waves:
            try:
                done += self._wave(ids, lengths, waves[0], label_ids, raw)
            except torch.OutOfMemoryError:
                if self.max_batch_size == 1:
                    raise
                self._halve_batches(int(lengths.max()))
                waves = plan_waves([g for w in waves for g in w.groups], lengths, self.max_batch_tokens,
                                   self.max_batch_size)
                continue
            waves.pop(0)
        return done

    def _halve_batches(self, longest: int) -> None:
        self.max_batch_tokens = max(self.max_batch_tokens // 2, longest)
        self.max_batch_size = max(self.max_batch_size // 2, 1)
        log.warning("out of memory; halving batches to %d tokens / %d rows", self.max_batch_tokens, self.max_batch_size)
        torch.cuda.empty_cache()

    @torch.inference_mode()
    def _wave(self, ids: list[list[int]], lengths: np.ndarray, wave: Wave,
              label_ids: torch.Tensor, raw: bool) -> list[tuple[np.ndarray, torch.Tensor]]:
        """The (rows, labels) values of a wave's prompts: its prefixes once, then its suffix batches."""
        prefix_kv = self._prefill([ids[g.rows[0]][:g.prefix] for g in wave.groups])
        slot = np.empty(len(lengths), dtype=np.int64)
        prefix = np.empty(len(lengths), dtype=np.int64)
        for k, group in enumerate(wave.groups):
            slot[group.rows], prefix[group.rows] = k, group.prefix
        return [(rows, self._forward_suffixes(prefix_kv, slot[rows], prefix[rows],
                                              [ids[i][p:] for i, p in zip(rows, prefix[rows])], label_ids, raw))
                for rows in wave.batches]

    def _prefill(self, prefixes: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values (prefix, heads, position, dim) of right-padded ``prefixes``."""
        lengths = np.fromiter(map(len, prefixes), dtype=np.int64, count=len(prefixes))
        batch = self._to_device(_right_padded(prefixes, lengths, self._pad_id))
        cache = getattr(self._decoder(input_ids=batch, use_cache=True), self._cache_name)
        kinds = {type(layer).__name__ for layer in cache.layers} - {"DynamicLayer"}
        if kinds:  # sliding-window or linear-attention layers keep other state
            raise ValueError(f"the model's cache has {', '.join(sorted(kinds))} layers")
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _forward_suffixes(self, prefix_kv: list[tuple[torch.Tensor, torch.Tensor]], slots: np.ndarray,
                          prefix: np.ndarray, suffixes: list[list[int]], label_ids: torch.Tensor,
                          raw: bool = False) -> torch.Tensor:
        """The (rows, labels) values of right-padded ``suffixes``, each after prefix ``slots`` of ``prefix`` tokens."""
        lengths = np.fromiter(map(len, suffixes), dtype=np.int64, count=len(suffixes))
        width = int(prefix.max())
        # Prefix slots past a row's own prefix hold another prefix's tokens or padding: masked out.
        mask = np.concatenate([np.arange(width) < prefix[:, None], np.ones((len(suffixes), lengths.max()), bool)], 1)
        batch, mask, positions, slots, last = (self._to_device(a) for a in (
            _right_padded(suffixes, lengths, self._pad_id), mask, prefix[:, None] + np.arange(lengths.max()),
            slots, lengths - 1))
        if len(prefix_kv[0][0]) == 1:  # one prefix: a view of it for every row
            rows = len(suffixes)
            past = [(k[:, :, :width].expand(rows, -1, -1, -1), v[:, :, :width].expand(rows, -1, -1, -1))
                    for k, v in prefix_kv]
        else:
            past = [(k[:, :, :width].index_select(0, slots), v[:, :, :width].index_select(0, slots))
                    for k, v in prefix_kv]
        hidden = self._decoder(input_ids=batch, attention_mask=mask, position_ids=positions,
                               **{self._cache_name: SharedPrefixCache(past)}, use_cache=True).last_hidden_state
        return self._head(hidden[torch.arange(len(suffixes), device=self.device), last], label_ids, raw)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    @torch.inference_mode()
    def _forward(self, rows: list[list[int]], lengths: np.ndarray, label_ids: torch.Tensor,
                 raw: bool = False) -> torch.Tensor:
        """The (rows, labels) log-probabilities (``raw``: logits) of one batch, left on the device."""
        if self.whole_forward:
            return self._forward_whole(rows, lengths, label_ids, raw)
        batch = _right_padded(rows, lengths, self._pad_id)
        inputs = torch.from_numpy(np.concatenate([batch.ravel(), lengths - 1]))
        if self.device.type == "cuda":
            inputs = inputs.pin_memory()  # lets the copy below run without blocking the host
        inputs = inputs.to(self.device, non_blocking=True)
        batch, last = inputs[: batch.size].view(batch.shape), inputs[batch.size:]
        hidden = self._decoder(input_ids=batch, use_cache=False).last_hidden_state
        return self._head(hidden[torch.arange(len(rows), device=self.device), last], label_ids, raw)

    def _head(self, last: torch.Tensor, label_ids: torch.Tensor, raw: bool) -> torch.Tensor:
        """The label values of each row's last hidden state, through a float32 copy of the LM head."""
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
        return _label_values(logits, label_ids, raw)

    @torch.inference_mode()
    def _prefix_sharing_gives_the_same_logits(self) -> bool:
        """Whether prompts run as a shared prefix and suffixes give the unshared logits, on a probe."""
        rows = [self._tokenizer.encode(f"Is this passage relevant to the query? Answer with a digit: {tail}",
                                       add_special_tokens=False) for tail in ("7", "3, or maybe 4")]
        shared = min(len(rows[0]), len(rows[1])) - 1
        while rows[0][:shared] != rows[1][:shared]:
            shared -= 1
        vocabulary = torch.arange(len(self._head_weight), device=self.device)
        try:
            prefix_kv = self._prefill([rows[0][:shared]])
            got = self._forward_suffixes(prefix_kv, np.zeros(2, dtype=np.int64), np.full(2, shared),
                                         [r[shared:] for r in rows], vocabulary)
        except (TypeError, ValueError, AttributeError, RuntimeError) as e:
            log.info("%s: shared prefixes are off: the model's cache does not take them (%s)", self.model_name, e)
            return False
        want = self._forward(rows, np.array([len(r) for r in rows]), vocabulary)
        tolerance = 1e-5 if self.model.dtype in (torch.float32, torch.float64) else 2e-2
        same = torch.allclose(got, want, rtol=tolerance, atol=tolerance)
        if not same:
            log.info("%s: shared prefixes are off: they change the model's logits on a probe", self.model_name)
        return same

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
    """The labels' values from (rows, vocabulary) logits: their float32 raw logits (``raw``), or their
    log-probabilities under a float32 log-softmax over the whole vocabulary."""
    logits = logits.float()
    return logits[:, label_ids] if raw else torch.log_softmax(logits, dim=-1)[:, label_ids]


def _right_padded(rows: list[list[int]], lengths: np.ndarray, pad: int) -> np.ndarray:
    batch = np.full((len(rows), int(lengths.max())), pad, dtype=np.int64)
    batch[np.arange(batch.shape[1]) < lengths[:, None]] = np.fromiter(
        itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return batch


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

"""Engine drivers, each a subclass of ``Engine`` in its own module, imported only when asked for."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any

from ..errors import InputError, MissingExtra
from .base import Engine, LabelLogprobs

# name -> (module, class, pip extra)
ENGINES: dict[str, tuple[str, str, str]] = {
    "hf": ("genrank.engines.hf", "TransformersEngine", "hf"),
    "vllm": ("genrank.engines.vllm", "VLLMEngine", "vllm"),
    "lmdeploy": ("genrank.engines.lmdeploy", "LMDeployEngine", "lmdeploy"),
    "openai": ("genrank.engines.openai", "OpenAIEngine", "openai"),
}
ALIASES = {"transformers": "hf"}

log = logging.getLogger(__name__)


def engine_class(name: str) -> type:
    """The driver class for an engine name ("auto" included), with a clear error when its extra is missing."""
    if name == "auto":
        name, why = auto_engine()
        log.info("engine='auto' chose %r: %s", name, why)
    name = ALIASES.get(name, name)
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; choose one of: auto, {', '.join(ENGINES)}, transformers "
                         "(or pass an Engine instance)")
    module, cls, extra = ENGINES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise MissingExtra(f"engine {name!r} needs packages that are not installed ({e}); "
                          f"install them with: pip install 'genrank[{extra}]'") from e


def auto_engine() -> tuple[str, str]:
    """The engine "auto" stands for, and why: vLLM when it is installed and a CUDA GPU is present, else hf."""
    if importlib.util.find_spec("vllm") is None:
        return "hf", "vLLM is not installed"
    if importlib.util.find_spec("torch") is None:
        return "hf", "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "hf", "no CUDA GPU is visible to torch"
    return "vllm", "vLLM is installed and a CUDA GPU is present"


def make_engine(engine: str | Engine, model: str | None, *, raw_logits: bool = False, **kwargs: Any) -> Engine:
    """An engine instance from a name (with the model and driver options) or an instance.

    ``raw_logits``: the recipe scores raw logits, so a driver that can be made to return them
    (its ``raw_logits_options``, e.g. vLLM's ``logprobs_mode="raw_logits"``) is made so, unless
    the caller's options say otherwise.
    """
    if not isinstance(engine, str):
        if kwargs:
            raise TypeError(f"engine options {sorted(kwargs)} were given with an engine instance; "
                            "pass them to the engine's constructor instead")
        if not isinstance(engine, Engine):
            raise TypeError(f"engine must be a name or an instance of a genrank.engines.Engine subclass, got "
                            f"{type(engine).__name__}; subclass Engine (it provides every member but prompt_format, "
                            "tokenizer and label_logprobs)")
        return engine
    cls = engine_class(engine)
    if model is None:
        raise InputError(f"engine {engine!r} needs a model")
    if raw_logits:
        kwargs = {**cls.raw_logits_options, **kwargs}
    return cls(model, **kwargs)


__all__ = ["ENGINES", "Engine", "LabelLogprobs", "auto_engine", "engine_class", "make_engine"]

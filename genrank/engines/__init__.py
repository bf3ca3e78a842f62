"""Engine drivers. Each lives in its own module and is imported only when asked for."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .base import Engine, LabelLogprobs

# name -> (module, class, pip extra)
ENGINES: dict[str, tuple[str, str, str]] = {
    "hf": ("genrank.engines.hf", "TransformersEngine", "hf"),
    "vllm": ("genrank.engines.vllm", "VLLMEngine", "vllm"),
    "lmdeploy": ("genrank.engines.lmdeploy", "LMDeployEngine", "lmdeploy"),
    "openai": ("genrank.engines.openai", "OpenAIEngine", "openai"),
}
ALIASES = {"transformers": "hf"}


def engine_class(name: str) -> type:
    """The driver class for an engine name ("auto" included), with a clear error when its extra is missing."""
    name = auto_engine_name() if name == "auto" else ALIASES.get(name, name)
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of: auto, {', '.join(ENGINES)}, transformers "
                         "(or pass an Engine instance)")
    module, cls, extra = ENGINES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise ImportError(f"engine {name!r} needs packages that are not installed ({e}); "
                          f"install them with: pip install 'genrank[{extra}]'") from e


def auto_engine_name() -> str:
    """vLLM when it is installed and a CUDA GPU is present, else the transformers driver."""
    if importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "hf"


def make_engine(engine: str | Engine, model: str | None, **kwargs: Any) -> Engine:
    """An engine instance from a name (with the model and driver options) or an instance."""
    if not isinstance(engine, str):
        if kwargs:
            raise TypeError(f"engine options {sorted(kwargs)} were given with an engine instance; "
                            "pass them to the engine's constructor instead")
        if not isinstance(engine, Engine):
            raise TypeError(f"engine must be a name or an Engine, got {type(engine).__name__}")
        return engine
    cls = engine_class(engine)
    if model is None:
        raise ValueError(f"engine {engine!r} needs a model")
    return cls(model, **kwargs)


__all__ = ["ENGINES", "Engine", "LabelLogprobs", "engine_class", "make_engine"]

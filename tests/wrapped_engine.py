"""A test engine around another one, for tests that change one thing about a real engine's answers.

``WrappedEngine(inner)`` has the inner engine's tokenizer, model name, kind and scoring method
(so a batch manifest records the same scores) and passes ``label_logprobs`` on; a subclass
overrides what its test changes.
"""

from __future__ import annotations

from typing import Any

from genrank.engines import Engine, LabelLogprobs


class WrappedEngine(Engine):
    prompt_format = "tokens"

    def __init__(self, inner: Engine):
        self.inner = inner
        self.model_name, self.kind, self.scoring_method = inner.model_name, inner.kind, inner.scoring_method

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    def label_logprobs(self, prompts, labels) -> LabelLogprobs:
        return self.inner.label_logprobs(prompts, labels)

"""genrank: turn a causal LLM into a reranker."""

from importlib.metadata import PackageNotFoundError, version

from .engines import Engine, LabelLogprobs
from .errors import GenrankError
from .pieces import PieceBuilder
from .prompts import Labels, PromptBuilder, Prompts
from .reranker import Reranker, ScoredPairs, ScoringError
from .scorer import ScoreRule, Scores, ZeroLabelMassWarning, expected_scores
from .templates import Template, TemplateError, list_templates, load_template, template_for_model

try:
    __version__ = version("genrank")
except PackageNotFoundError:  # pragma: no cover - source checkout without install
    __version__ = "0.0.0"

__all__ = [
    "Engine", "GenrankError", "LabelLogprobs", "Labels", "PieceBuilder", "PromptBuilder", "Prompts", "Reranker",
    "ScoreRule", "ScoredPairs", "ScoringError", "Scores", "Template", "TemplateError", "ZeroLabelMassWarning",
    "expected_scores", "list_templates", "load_template", "template_for_model",
]

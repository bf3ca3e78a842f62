"""``CALIB.json``: a fitted map from a Reranker's score to P(relevant), what it was fitted for, and how well it does.

The map takes ``ScoredPairs.score`` (the expected label value) to a probability:

- ``platt``: ``1 / (1 + exp(-(slope * score + intercept)))``;
- ``isotonic``: linear interpolation between the fitted thresholds ``x`` -> ``y`` (non-decreasing),
  clipped to the end values outside them (scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``).

It holds only numbers, so it applies without scikit-learn or pickles. A calibration is valid only
for the recipe (template and instruction), score settings (label normalisation, long documents)
and model it was fitted with: ``check`` refuses any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GenrankError
from ..templates import Template, template_sha256

FORMAT = "genrank-calibration"
VERSION = 1
METHODS = ("platt", "isotonic")


class CalibrationError(GenrankError):
    """A calibration file that cannot be read, or one that does not fit this Reranker."""


class CalibrationWarning(UserWarning):
    """A calibration applied with a setting that may shift its scores (e.g. another max length)."""


@dataclass(frozen=True)
class Calibration:
    """A fitted score -> P(relevant) map with the settings it was fitted for, its data and its held-out metrics."""

    method: str  # "platt" or "isotonic"
    parameters: dict[str, Any]  # platt: slope, intercept; isotonic: x, y (thresholds)
    fitted_for: dict[str, Any]  # model, template, instruction, max_length, normalize, long_documents
    data: dict[str, Any] = field(default_factory=dict)  # where the labels came from, fingerprint, size, split
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out metrics before and after
    source: str | None = field(default=None, compare=False)  # the file it was read from

    def __post_init__(self) -> None:
        where = self.source or "the calibration"
        if self.method not in METHODS:
            raise CalibrationError(f"{where}: method must be one of {METHODS}, got {self.method!r}")
        try:
            if self.method == "platt":
                values = [float(self.parameters["slope"]), float(self.parameters["intercept"])]
                ok = all(np.isfinite(values))
            else:
                x, y = np.asarray(self.parameters["x"], float), np.asarray(self.parameters["y"], float)
                ok = (x.ndim == 1 and len(x) >= 1 and x.shape == y.shape and np.all(np.isfinite(x))
                      and np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0) and np.all((y >= 0) & (y <= 1)))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            need = ("finite slope and intercept" if self.method == "platt"
                    else "x strictly increasing, y non-decreasing on [0, 1], of one length")
            raise CalibrationError(f"{where}: bad {self.method} parameters (need {need})")

    def probability(self, score: np.ndarray | list[float] | float) -> np.ndarray:
        """P(relevant) for each score (``ScoredPairs.score``); NaN stays NaN."""
        s = np.asarray(score, dtype=np.float64)
        if self.method == "platt":
            z = self.parameters["slope"] * s + self.parameters["intercept"]
            return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
        return np.interp(s, self.parameters["x"], self.parameters["y"])

    @property
    def digest(self) -> str:
        """SHA-256 of the map and what it was fitted for: two calibrations with one digest score alike."""
        content = json.dumps({"method": self.method, "parameters": self.parameters, "fitted_for": self.fitted_for},
                             sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()

    def check(self, reranker: Any, *, allow_other_model: bool = False) -> None:
        """``check_settings`` and ``check_model`` for a built Reranker."""
        now = fitted_for(reranker)
        self.check_settings(now)
        self.check_model(now["model"], allow_other_model=allow_other_model)

    def check_settings(self, now: dict[str, Any]) -> None:
        """A CalibrationError (one line naming both) if ``now`` (``score_settings``) has another recipe or
        other score settings; a CalibrationWarning for another max length, which changes only the
        scores of pairs that do not fit."""
        was, where = self.fitted_for, self.source or "the calibration"
        template_was, template_now = was.get("template") or {}, now["template"]
        if template_was.get("name") != template_now["name"]:
            raise CalibrationError(f"{where} was fitted for template {template_was.get('name')!r}, this Reranker "
                                   f"uses {template_now['name']!r}; fit one for it with genrank calibrate")
        if template_was.get("sha256") != template_now["sha256"]:
            raise CalibrationError(f"{where} was fitted for template {template_now['name']!r} with content sha256 "
                                   f"{str(template_was.get('sha256'))[:12]}..., this Reranker's is "
                                   f"{template_now['sha256'][:12]}... (the template was edited); fit it again")
        checks = (("instruction", "instruction", _shown), ("normalize", "label normalisation", _on_off),
                  ("long_documents", "long_documents", _shown))
        for key, name, shown in checks:
            if was.get(key) != now[key]:
                raise CalibrationError(f"{where} was fitted with {name} {shown(was.get(key))}, this Reranker has "
                                       f"{shown(now[key])}; fit one for these settings with genrank calibrate")
        if was.get("max_length") != now["max_length"]:
            warnings.warn(f"{where} was fitted with max_length {was.get('max_length')}, this Reranker has "
                          f"{now['max_length']}: pairs that do not fit both are scored differently",
                          CalibrationWarning, stacklevel=3)

    def check_model(self, model: str | None, *, allow_other_model: bool = False) -> None:
        """A CalibrationError naming both if ``model`` is not the model it was fitted for, unless allowed."""
        was, where = self.fitted_for.get("model"), self.source or "the calibration"
        if was != model and not allow_other_model:
            raise CalibrationError(f"{where} was fitted for model {was!r}, this Reranker runs {model!r}; fit one "
                                   "for it, or allow it (allow_other_model=True, --allow-other-model) if the two "
                                   "models score alike")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "method": self.method, "input": "score",
                "parameters": self.parameters, "fitted_for": self.fitted_for, "data": self.data,
                "metrics": self.metrics}

    def save(self, path: str | os.PathLike) -> None:
        """Write the calibration as JSON (atomically: a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """A calibration from ``CALIB.json``; a CalibrationError saying what is wrong with the file."""
        where = str(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise CalibrationError(f"cannot read calibration {where!r}: {e.strerror}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise CalibrationError(f"calibration {where!r} is not JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(f"{where!r} is not a genrank calibration (no \"format\": \"{FORMAT}\"); "
                                   "make one with genrank calibrate")
        if data.get("version") != VERSION:
            raise CalibrationError(f"calibration {where!r} has version {data.get('version')!r}; this genrank "
                                   f"reads version {VERSION}")
        if data.get("input", "score") != "score" or not isinstance(data.get("fitted_for"), dict):
            raise CalibrationError(f"calibration {where!r}: expected \"input\": \"score\" and a \"fitted_for\" object")
        return cls(data.get("method"), data.get("parameters") or {}, data["fitted_for"], data.get("data") or {},
                   data.get("metrics") or {}, source=where)


def load_calibration(calibration: str | os.PathLike | Calibration) -> Calibration:
    """``calibration`` itself, or the one read from its path."""
    return calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)


def score_settings(template: Template, *, instruction: str | None, max_length: int, normalize: bool,
                   long_documents: str) -> dict[str, Any]:
    """The settings besides the model that a calibration depends on (known before the model loads)."""
    return {"template": {"name": template.name, "sha256": template_sha256(template)}, "instruction": instruction,
            "max_length": max_length, "normalize": normalize, "long_documents": long_documents}


def fitted_for(reranker: Any) -> dict[str, Any]:
    """The settings of ``reranker`` that a calibration depends on: its model and ``score_settings``."""
    name = getattr(reranker.engine, "model_name", None)
    model = os.path.realpath(name) if isinstance(name, str) and os.path.isdir(name) else name
    return {"model": model, **score_settings(reranker.template, instruction=reranker.instruction,
                                             max_length=reranker.builder.max_length, normalize=reranker.normalize,
                                             long_documents=reranker.long_documents)}


def _shown(value: Any) -> str:
    return "none" if value is None else repr(value)


def _on_off(value: Any) -> str:
    return "on" if value else "off (--card-formula)"


__all__ = ["Calibration", "CalibrationError", "CalibrationWarning", "METHODS", "fitted_for", "load_calibration",
           "score_settings"]

"""The blend family: the encoder's probabilities mixed with the n-gram model's (a wide-and-deep pair).

A blend model directory is an encoder model directory plus ``ngram/`` (a saved
:class:`~textclf.model.ngram.NgramModel` with the same label order) and ``textclf_blend.json``, which
holds the encoder's weight ``w``: probabilities are ``w * encoder + (1 - w) * ngram``. ``w`` is chosen on
val (:func:`choose_weight`; textclf.train.blend fits it). The :class:`~textclf.model.predictor.Predictor`
applies it, so evaluation, variants, the pyfunc, the gate and the service serve a blend unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textclf.errors import ModelSourceError
from textclf.model.ngram import NgramModel

BLEND_FILE = "textclf_blend.json"
NGRAM_DIR = "ngram"


@dataclass(frozen=True)
class Blend:
    weight: float  # the encoder's share
    ngram: NgramModel

    def mix(self, encoder_proba: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """``texts`` normalized as the encoder saw them (the n-gram part was fit on prepared text)."""
        return self.weight * encoder_proba + (1.0 - self.weight) * self.ngram.predict_proba(texts)

    def save(self, model_dir: Path, figures: dict[str, Any]) -> None:
        self.ngram.save(model_dir / NGRAM_DIR)
        text = json.dumps({"weight": self.weight, **figures}, indent=2, sort_keys=True) + "\n"
        (model_dir / BLEND_FILE).write_text(text, encoding="utf-8")


def load_blend(model_dir: Path, labels: Sequence[str]) -> Blend | None:
    """The blend in ``model_dir`` (None: an encoder alone); its labels must be the encoder's, in order."""
    path = model_dir / BLEND_FILE
    if not path.is_file():
        return None
    ngram = NgramModel.load(model_dir / NGRAM_DIR)
    if list(ngram.labels) != list(labels):
        raise ModelSourceError(
            f"{model_dir}: n-gram labels {list(ngram.labels)} != encoder labels {list(labels)}"
        )
    return Blend(float(json.loads(path.read_text(encoding="utf-8"))["weight"]), ngram)


def choose_weight(
    score: Any, encoder_proba: np.ndarray, ngram_proba: np.ndarray, weights: Sequence[float]
) -> tuple[float, dict[float, float]]:
    """The encoder weight whose blend scores best (``score(proba) -> float``, on val), the largest among
    ties (1.0: the encoder alone); and every weight's score."""
    scores = {w: float(score(w * encoder_proba + (1.0 - w) * ngram_proba)) for w in weights}
    best = max(scores.values())
    return max(w for w, s in scores.items() if s == best), scores

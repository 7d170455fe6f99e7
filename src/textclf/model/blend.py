"""The blend family: the encoder's probabilities mixed with the n-gram model's (a wide-and-deep pair).

A blend model directory is an encoder model directory plus ``ngram/`` (a saved
:class:`~textclf.model.ngram.NgramModel` with the same label order) and ``textclf_blend.json``, which
holds the encoder's weight ``w``: probabilities are ``w * encoder + (1 - w) * ngram``. ``w`` is chosen on
val (:func:`choose_weight`; textclf.train.blend fits it). Loaded with its encoder (:func:`load_blend`)
it is a family like the others (textclf.model.family), so evaluation, the pyfunc, the gate and the
service serve it unchanged; its variants are the encoder's, judged inside the blend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from textclf.errors import ModelSourceError
from textclf.model.encoder import Encoder
from textclf.model.ngram import NgramModel

BLEND_FILE = "textclf_blend.json"
NGRAM_DIR = "ngram"


@dataclass(frozen=True)
class Blend:
    weight: float  # the encoder's share
    ngram: NgramModel
    encoder: Encoder | None = None  # set when loaded to predict (load_blend); not needed to save

    name: ClassVar[str] = "blend"

    def _encoder(self) -> Encoder:
        if self.encoder is None:
            raise ModelSourceError("this blend was not loaded with its encoder (load_blend)")
        return self.encoder

    @property
    def labels(self) -> list[str]:
        return self._encoder().labels

    @property
    def runtime(self) -> str:
        return self._encoder().runtime

    @property
    def variants(self) -> tuple[str, ...]:
        return self._encoder().variants

    def describe(self) -> str:
        w = self.weight
        return f"blend: {w:g} x encoder + {1 - w:g} x char n-gram TF-IDF model (weight chosen on val)"

    def forward(self, clean: list[str], batch_size: int | None) -> tuple[np.ndarray, list[bool]]:
        proba, truncated = self._encoder().forward(clean, batch_size)
        return self.mix(proba, clean), truncated

    def mix(self, encoder_proba: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """``texts`` normalized as the encoder saw them (the n-gram part was fit on prepared text)."""
        return self.weight * encoder_proba + (1.0 - self.weight) * self.ngram.predict_proba(texts)

    def save(self, model_dir: Path, figures: dict[str, Any]) -> None:
        self.ngram.save(model_dir / NGRAM_DIR)
        text = json.dumps({"weight": self.weight, **figures}, indent=2, sort_keys=True) + "\n"
        (model_dir / BLEND_FILE).write_text(text, encoding="utf-8")


def read_blend(model_dir: Path) -> Blend:
    """The blend saved in ``model_dir``, without its encoder (enough to describe it)."""
    weight = float(json.loads((model_dir / BLEND_FILE).read_text(encoding="utf-8"))["weight"])
    return Blend(weight, NgramModel.load(model_dir / NGRAM_DIR))


def load_blend(model_dir: Path, encoder: Encoder) -> Blend:
    """The blend in ``model_dir`` around its loaded ``encoder``; the n-gram labels must be the encoder's,
    in order."""
    blend = read_blend(model_dir)
    if list(blend.ngram.labels) != list(encoder.labels):
        raise ModelSourceError(
            f"{model_dir}: n-gram labels {list(blend.ngram.labels)} != encoder labels {encoder.labels}"
        )
    return Blend(blend.weight, blend.ngram, encoder)


def choose_weight(
    score: Any, encoder_proba: np.ndarray, ngram_proba: np.ndarray, weights: Sequence[float]
) -> tuple[float, dict[float, float]]:
    """The encoder weight whose blend scores best (``score(proba) -> float``, on val), the largest among
    ties (1.0: the encoder alone); and every weight's score."""
    scores = {w: float(score(w * encoder_proba + (1.0 - w) * ngram_proba)) for w in weights}
    best = max(scores.values())
    return max(w for w, s in scores.items() if s == best), scores

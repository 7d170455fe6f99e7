"""Load a saved model directory and predict raw text.

A model directory holds one model family (textclf.model.family: an encoder, an n-gram model, or their
blend) plus ``textclf_preprocessing.json``: the normalization settings (and, for an encoder, the max
length) used in training. Serving, evaluation, the gate and the MLflow pyfunc all go through
:class:`Predictor`, so preprocessing exists in one place only. A model directory prepared for serving
names its runtime in ``textclf_runtime.json``; without it the model runs as trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textclf.config import NormalizeConfig
from textclf.data.normalize import normalize
from textclf.errors import ModelSourceError
from textclf.model.blend import Blend
from textclf.model.encoder import Encoder
from textclf.model.family import REFERENCE, Family, load_family

PREPROCESSING_FILE = "textclf_preprocessing.json"
RUNTIME_FILE = "textclf_runtime.json"  # {"runtime": ..., "parity": {...}}: what a served directory runs


@dataclass(frozen=True)
class Preprocessing:
    normalize: NormalizeConfig
    max_length: int | None  # tokens an encoder reads; None: the n-gram family reads whole texts

    def to_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize.model_dump(), "max_length": self.max_length}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        length = raw["max_length"]
        return cls(
            normalize=NormalizeConfig(**raw["normalize"]), max_length=None if length is None else int(length)
        )

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / PREPROCESSING_FILE).write_text(
            json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, model_dir: Path) -> Preprocessing:
        path = Path(model_dir) / PREPROCESSING_FILE
        if not path.is_file():
            raise ModelSourceError(
                f"{model_dir} is not a textclf model directory: {PREPROCESSING_FILE} missing"
            )
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    truncated: bool


class Predictor:
    """Normalize → the family's forward pass (textclf.model.family) → probabilities in ``labels`` order.

    ``runtime`` defaults to the one ``textclf_runtime.json`` names (as trained without it); ONNX files
    are read from ``onnx_dir`` (default: the model directory). ``threads`` caps ONNX Runtime's intra-op
    threads (torch's are process-wide: ``torch.set_num_threads``).
    """

    def __init__(
        self,
        model_dir: Path | str,
        device: str | None = None,
        runtime: str | None = None,
        onnx_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelSourceError(f"model directory not found: {model_dir}")
        self.model_dir = model_dir
        self.preprocessing = Preprocessing.load(model_dir)
        served = model_dir / RUNTIME_FILE
        self.serving: dict[str, Any] = (
            json.loads(served.read_text(encoding="utf-8")) if served.is_file() else {}
        )
        self.family: Family = load_family(
            model_dir,
            self.preprocessing.max_length,
            runtime or self.serving.get("runtime", REFERENCE),
            device,
            onnx_dir,
            threads,
        )
        self.labels: list[str] = list(self.family.labels)
        self.runtime = self.family.runtime

    @property
    def max_length(self) -> int | None:
        return self.preprocessing.max_length

    @property
    def encoder(self) -> Encoder | None:
        """The encoder, alone or inside a blend (None for the n-gram family)."""
        family = self.family
        return (
            family.encoder if isinstance(family, Blend) else family if isinstance(family, Encoder) else None
        )

    @property
    def device(self) -> Any:
        """Where the forward pass runs (a ``torch.device``; the CPU for the n-gram family)."""
        import torch

        return self.encoder.device if self.encoder else torch.device("cpu")

    @property
    def tokenizer(self) -> Any:
        """The encoder's tokenizer (None for the n-gram family)."""
        return self.encoder.tokenizer if self.encoder else None

    def normalize(self, texts: list[str]) -> list[str]:
        return [normalize(t, self.preprocessing.normalize) for t in texts]

    def predict_proba(
        self, texts: list[str], batch_size: int | None = None, *, normalized: bool = False
    ) -> tuple[np.ndarray, list[bool]]:
        """Probabilities (n, n_labels) in ``self.labels`` order and a per-text truncation flag, computed
        ``batch_size`` texts at a time (None: all in one batch; callers pass train.eval_batch_size or
        serve.max_batch_size). ``normalized``: the texts already went through :meth:`normalize`."""
        clean = list(texts) if normalized else self.normalize(list(texts))
        return self.family.forward(clean, batch_size)

    def predict(
        self, texts: list[str], batch_size: int | None = None, *, normalized: bool = False
    ) -> list[Prediction]:
        probs, truncated = self.predict_proba(texts, batch_size, normalized=normalized)
        out = []
        for row, trunc in zip(probs, truncated, strict=True):
            out.append(
                Prediction(
                    label=self.labels[int(row.argmax())],
                    probabilities={lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
                    truncated=trunc,
                )
            )
        return out

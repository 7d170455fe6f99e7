"""Load a saved model directory and predict raw text.

A model directory is a standard Hugging Face directory (safetensors weights, config.json with
``id2label``/``label2id``, tokenizer files) plus ``textclf_preprocessing.json``: the normalization
settings and max length used in training. Serving, evaluation and the MLflow pyfunc all go through
:class:`Predictor`, so preprocessing exists in one place only.
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

PREPROCESSING_FILE = "textclf_preprocessing.json"


@dataclass(frozen=True)
class Preprocessing:
    normalize: NormalizeConfig
    max_length: int

    def to_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize.model_dump(), "max_length": self.max_length}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        return cls(normalize=NormalizeConfig(**raw["normalize"]), max_length=int(raw["max_length"]))

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
    """Normalize → tokenize (truncate to max_length) → forward under inference_mode → softmax."""

    def __init__(self, model_dir: Path | str, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelSourceError(f"model directory not found: {model_dir}")
        self.model_dir = model_dir
        self.preprocessing = Preprocessing.load(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(self.device)
        self.model.eval()
        id2label = self.model.config.id2label
        self.labels: list[str] = [id2label[i] for i in range(len(id2label))]

    @property
    def max_length(self) -> int:
        return self.preprocessing.max_length

    def normalize(self, texts: list[str]) -> list[str]:
        return [normalize(t, self.preprocessing.normalize) for t in texts]

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """Probabilities (n, n_labels) in ``self.labels`` order and a per-text truncation flag."""
        import torch

        clean = self.normalize(list(texts))
        probs: list[np.ndarray] = []
        truncated: list[bool] = []
        with torch.inference_mode():
            for start in range(0, len(clean), batch_size):
                chunk = clean[start : start + batch_size]
                full = self.tokenizer(chunk, truncation=False, add_special_tokens=True)["input_ids"]
                truncated.extend(len(ids) > self.max_length for ids in full)
                enc = self.tokenizer(
                    chunk, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
                ).to(self.device)
                logits = self.model(**enc).logits.float()
                probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
        if not probs:
            return np.zeros((0, len(self.labels)), dtype=np.float32), []
        return np.concatenate(probs), truncated

    def predict(self, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        probs, truncated = self.predict_proba(texts, batch_size)
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

"""Training inputs: the label list, tokenized datasets, and the fingerprint that guards resumption."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from textclf.config import Config
from textclf.data.prepare import split_digest
from textclf.errors import DataError


def resolve_labels(configured: Sequence[str] | None, train: pd.DataFrame, val: pd.DataFrame) -> list[str]:
    """Configured labels (in their order), else the sorted labels seen in train; any count >= 2."""
    labels = list(configured) if configured else sorted(set(train["label"]))
    if len(labels) < 2:
        raise DataError(f"training needs at least two classes, found {labels}")
    for name, frame in (("train", train), ("val", val)):
        unknown = sorted(set(frame["label"]) - set(labels))
        if unknown:
            raise DataError(f"{name} split has labels not in {labels}: {unknown}")
    return labels


class EncodedDataset:
    """Map-style dataset of tokenized examples (unpadded: the collator pads per batch)."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: Sequence[int] | None = None) -> None:
        self._enc = encodings
        self._labels = None if labels is None else list(labels)

    @property
    def encodings(self) -> dict[str, list[list[int]]]:
        return self._enc

    def __len__(self) -> int:
        return len(self._enc["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[i] for k, v in self._enc.items()}
        if self._labels is not None:
            item["labels"] = self._labels[i]
        return item


def encode(
    tokenizer: Any, texts: Sequence[str], labels: Sequence[int] | None, max_length: int
) -> EncodedDataset:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return EncodedDataset({k: list(v) for k, v in enc.items()}, labels)


def _code_version() -> str:
    """Hash of the textclf sources that define what a checkpoint means (train and model)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted([*(root / "train").rglob("*.py"), *(root / "model").rglob("*.py")]):
        h.update(path.read_bytes())
    return h.hexdigest()


def training_fingerprint(cfg: Config, train: pd.DataFrame, val: pd.DataFrame) -> str:
    """What a checkpoint depends on: both splits, the effective model/train settings, the code.
    Thread count and logging cadence do not change the result."""
    settings = {
        "model": cfg.model.model_dump(mode="json"),
        "train": cfg.train.model_dump(mode="json", exclude={"num_threads", "logging_steps"}),
        "normalize": cfg.prepare.normalize.model_dump(mode="json"),
        "labels": cfg.data.labels,
        "data": [split_digest(train), split_digest(val)],
        "code": _code_version(),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

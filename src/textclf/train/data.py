"""Training inputs: label resolution, tokenized datasets, and the resume fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from textclf.config import Config, NormalizeConfig
from textclf.data.normalize import normalize
from textclf.errors import DataError

logger = logging.getLogger(__name__)

TEXT, LABEL = "text", "label"
# Packages whose source defines what a checkpoint means; an edit there invalidates old checkpoints.
_CODE_PACKAGES = ("train", "model")


def resolve_labels(configured: Sequence[str] | None, train: pd.DataFrame, val: pd.DataFrame) -> list[str]:
    """Configured labels (in their order), else the sorted labels seen in train; any count >= 2."""
    seen_train = {str(v) for v in train[LABEL].unique()}
    labels = [str(v) for v in configured] if configured else sorted(seen_train)
    if len(labels) < 2:
        raise DataError(f"training needs at least two classes, found {labels}")
    for name, frame in (("train", train), ("val", val)):
        unknown = sorted({str(v) for v in frame[LABEL].unique()} - set(labels))
        if unknown:
            raise DataError(f"{name} split has labels not in {labels}: {unknown}")
    return labels


def check_columns(frame: pd.DataFrame, name: str) -> None:
    missing = [c for c in (TEXT, LABEL) if c not in frame.columns]
    if missing:
        raise DataError(f"{name} split lacks column(s) {missing}; has {list(frame.columns)}")
    if frame.empty:
        raise DataError(f"{name} split is empty")


def clean_texts(texts: Sequence[str], cfg: NormalizeConfig) -> list[str]:
    """The shared normalization (idempotent, so already-prepared text is unchanged)."""
    return [normalize(str(t), cfg) for t in texts]


class EncodedDataset:
    """Map-style dataset of tokenized examples; ``input_ids`` lengths drive length grouping."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: Sequence[int]) -> None:
        self._enc = encodings
        self._labels = list(labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[i] for k, v in self._enc.items()}
        item["labels"] = self._labels[i]
        return item

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self._enc["input_ids"]]


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    label_ids: Sequence[int],
    max_length: int,
    sort_by_length: bool = False,
) -> EncodedDataset:
    """Tokenize without padding (the collator pads per batch). ``sort_by_length`` is for eval
    sets: sequential eval batches of similar length waste little compute on padding."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    columns = {k: list(v) for k, v in enc.items()}
    labels = list(label_ids)
    if sort_by_length:
        order = sorted(range(len(labels)), key=lambda i: len(columns["input_ids"][i]))
        columns = {k: [v[i] for i in order] for k, v in columns.items()}
        labels = [labels[i] for i in order]
    return EncodedDataset(columns, labels)


# --------------------------------------------------------------------------- fingerprint
def frame_digest(frame: pd.DataFrame) -> str:
    """Content hash of the text and label columns (row order included)."""
    h = hashlib.sha256()
    for text, label in zip(frame[TEXT].astype(str), frame[LABEL].astype(str), strict=True):
        h.update(text.encode("utf-8"))
        h.update(b"\x1f")
        h.update(label.encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()


def code_version() -> str:
    """Hash of the textclf train/model sources (not the installed libraries)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in _CODE_PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def training_fingerprint(cfg: Config, train: pd.DataFrame, val: pd.DataFrame) -> dict[str, str]:
    """What a checkpoint depends on. Thread count and logging cadence do not change the result."""
    train_cfg = cfg.train.model_dump(mode="json", exclude={"num_threads", "logging_steps"})
    settings = {
        "model": cfg.model.model_dump(mode="json"),
        "train": train_cfg,
        "normalize": cfg.prepare.normalize.model_dump(mode="json"),
        "labels": list(cfg.data.labels) if cfg.data.labels else None,
    }
    parts = {
        "train_data": frame_digest(train),
        "val_data": frame_digest(val),
        "config": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
        "code": code_version(),
    }
    parts["fingerprint"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts

"""The n-gram family: TF-IDF character n-grams + logistic regression (settings: evaluate.baseline).

Three uses: the baseline, trained on the same prepared (already normalized) train split as the
candidate and scored on the same test split, so "did the candidate beat a linear model?" is answered on
every run; the n-gram part of a blend (textclf.model.blend), saved inside the model directory; and a
candidate of its own (``model.family: ngram``), a model directory holding ``ngram.joblib``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from textclf.config import BaselineConfig
from textclf.errors import DataError

log = logging.getLogger(__name__)


NGRAM_FILE = "ngram.joblib"  # a fitted NgramModel, in the folder it was saved to


@dataclass(frozen=True)
class NgramModel:
    pipeline: Pipeline
    labels: tuple[str, ...]

    name: ClassVar[str] = "ngram"
    runtime: ClassVar[str] = "sklearn"  # its one runtime: no variants
    variants: ClassVar[tuple[str, ...]] = ()

    def describe(self) -> str:
        lo, hi = self.pipeline.named_steps["tfidf"].ngram_range
        return f"ngram: char {lo}-{hi}-gram TF-IDF + logistic regression"

    def forward(self, clean: list[str], batch_size: int | None = None) -> tuple[np.ndarray, list[bool]]:
        """The family interface (textclf.model.family): probabilities, and no text is ever truncated."""
        return self.predict_proba(clean), [False] * len(clean)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump({"pipeline": self.pipeline, "labels": list(self.labels)}, folder / NGRAM_FILE)

    @classmethod
    def load(cls, folder: Path) -> NgramModel:
        """Only from a folder the pipeline wrote (joblib runs code from the file): the gate's seal
        covers it like every other file of a model directory."""
        raw = joblib.load(folder / NGRAM_FILE)
        return cls(pipeline=raw["pipeline"], labels=tuple(raw["labels"]))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities (n, len(labels)) in ``labels`` order; a label unseen in training gets 0."""
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if not texts:
            return out
        raw = self.pipeline.predict_proba(texts)
        col = {lab: i for i, lab in enumerate(self.labels)}
        for j, cls in enumerate(self.pipeline.classes_):
            out[:, col[str(cls)]] = raw[:, j]
        return out


def build_pipeline(cfg: BaselineConfig) -> Pipeline:
    return Pipeline(
        [
            (
                "tfidf",
                TfidfVectorizer(
                    analyzer="char",
                    ngram_range=(cfg.ngram_min, cfg.ngram_max),
                    min_df=cfg.min_df,
                    sublinear_tf=cfg.sublinear_tf,
                    # The prepared text is already normalized; lowercasing is normalize()'s decision.
                    lowercase=False,
                    dtype=np.float64,
                ),
            ),
            # lbfgs is deterministic: same data and config give the same coefficients.
            ("clf", LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, solver="lbfgs")),
        ]
    )


def train_ngram(
    train_texts: Sequence[str], train_labels: Sequence[str], cfg: BaselineConfig, labels: Sequence[str]
) -> NgramModel:
    """Fit the baseline on the train split; ``labels`` fixes the column order of ``predict_proba``."""
    labels = tuple(labels)
    train_texts, train_labels = list(train_texts), [str(y) for y in train_labels]
    if len(train_texts) != len(train_labels):
        raise ValueError(f"{len(train_texts)} texts but {len(train_labels)} labels")
    unknown = sorted(set(train_labels) - set(labels))
    if unknown:
        raise DataError(f"train labels {unknown[:5]} are not among {list(labels)}")
    seen = sorted(set(train_labels))
    if len(seen) < 2:
        raise DataError(f"the baseline needs at least two classes in train, got {seen}")
    pipeline = build_pipeline(cfg)
    pipeline.fit(train_texts, train_labels)
    clf = pipeline.named_steps["clf"]
    if int(np.max(clf.n_iter_)) >= cfg.max_iter:
        log.warning("baseline logistic regression hit max_iter=%d without converging", cfg.max_iter)
    log.info(
        "baseline trained on %d texts: %d char n-gram features",
        len(train_texts),
        len(pipeline.named_steps["tfidf"].vocabulary_),
    )
    return NgramModel(pipeline=pipeline, labels=labels)

"""Fit a blend (textclf.model.blend) onto a trained encoder's model directory: the n-gram part on train,
the encoder's weight on val. Test is never read here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from textclf.config import Config
from textclf.evaluate import metrics as M
from textclf.model.blend import Blend, choose_weight
from textclf.model.ngram import train_ngram
from textclf.model.predictor import Predictor

log = logging.getLogger(__name__)


def fit_blend(cfg: Config, model_dir: Path, train: pd.DataFrame, val: pd.DataFrame) -> dict[str, Any]:
    """Write the blend into ``model_dir`` unless val picks the encoder alone (weight 1.0); returns the
    weight and the val macro-F1 of the encoder, the n-gram model and the blend (logged with the run)."""
    predictor = Predictor(model_dir, device="cpu")
    labels = predictor.labels
    ngram = train_ngram(train["text"].tolist(), train["label"].tolist(), cfg.evaluate.baseline, labels)
    texts = val["text"].tolist()  # prepared text: already normalized, as the n-gram part is fit on
    gold = M.encode_labels(val["label"].tolist(), labels)
    encoder, grams = predictor.predict_proba(texts, cfg.train.eval_batch_size)[0], ngram.predict_proba(texts)

    def f1(proba: Any) -> float:
        return M.macro_f1(gold, proba.argmax(axis=1), len(labels))

    weight, scores = choose_weight(f1, encoder, grams, cfg.model.blend_weights)
    figures = {
        "val_encoder_macro_f1": f1(encoder),
        "val_ngram_macro_f1": f1(grams),
        "val_blend_macro_f1": scores[weight],
    }
    if weight < 1.0:
        Blend(weight, ngram).save(model_dir, figures)
    log.info("blend: encoder weight %.2f chosen on val (%s)", weight, figures)
    return {"blend_weight": weight, **figures}

"""The families fitted without gradients: the n-gram model as the candidate (:func:`fit_ngram`), and a
blend (textclf.model.blend) onto a trained encoder's model directory (:func:`fit_blend`: the n-gram part
on train, the encoder's weight on val). Test is never read here."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from textclf.config import BaselineConfig, NormalizeConfig
from textclf.evaluate import metrics as M
from textclf.model.blend import Blend, choose_weight
from textclf.model.ngram import train_ngram
from textclf.model.predictor import Predictor, Preprocessing
from textclf.train.data import resolve_labels
from textclf.train.trainer import TrainResult

log = logging.getLogger(__name__)


def fit_blend(
    cfg: BaselineConfig,
    weights: Sequence[float],
    batch_size: int,
    model_dir: Path,
    train: pd.DataFrame,
    val: pd.DataFrame,
) -> dict[str, Any]:
    """Write the blend into the encoder's ``model_dir`` unless val picks the encoder alone among
    ``weights`` (1.0); returns the weight and the val macro-F1 of the encoder, the n-gram model and the
    blend (logged with the run). ``batch_size``: the encoder's, on val."""
    predictor = Predictor(model_dir, device="cpu")
    labels = predictor.labels
    ngram = train_ngram(train["text"].tolist(), train["label"].tolist(), cfg, labels)
    texts = val["text"].tolist()  # prepared text: already normalized, as the n-gram part is fit on
    gold = M.encode_labels(val["label"].tolist(), labels)
    encoder, grams = predictor.predict_proba(texts, batch_size)[0], ngram.predict_proba(texts)

    def f1(proba: Any) -> float:
        return M.macro_f1(gold, proba.argmax(axis=1), len(labels))

    weight, scores = choose_weight(f1, encoder, grams, weights)
    figures = {
        "val_encoder_macro_f1": f1(encoder),
        "val_ngram_macro_f1": f1(grams),
        "val_blend_macro_f1": scores[weight],
    }
    if weight < 1.0:
        Blend(weight, ngram).save(model_dir, figures)
    log.info("blend: encoder weight %.2f chosen on val (%s)", weight, figures)
    return {"blend_weight": weight, **figures}


def fit_ngram(
    cfg: BaselineConfig,
    normalize: NormalizeConfig,
    labels: Sequence[str] | None,
    model_dir: Path,
    train: pd.DataFrame,
    val: pd.DataFrame,
) -> TrainResult:
    """``model.family: ngram``: fit the n-gram model on train and save it as the model directory
    (replacing what was there); ``labels``: data.labels (None: those seen in train)."""
    start = time.perf_counter()
    labels = resolve_labels(labels, train, val)
    model = train_ngram(train["text"].tolist(), train["label"].tolist(), cfg, labels)
    shutil.rmtree(model_dir, ignore_errors=True)  # no other family's files may stay beside it
    model.save(model_dir)
    Preprocessing(normalize=normalize, max_length=None).save(model_dir)
    gold, pred = M.encode_labels(val["label"].tolist(), labels), model.predict_proba(val["text"]).argmax(1)
    best = {"val_accuracy": M.accuracy(gold, pred), "val_macro_f1": M.macro_f1(gold, pred, len(labels))}
    seconds = time.perf_counter() - start
    log.info("ngram family fitted on %d texts in %.1f s: %s", len(train), seconds, best)
    return TrainResult(
        global_step=0,
        resumed_from_step=0,
        history=[],
        best=best,
        wall_time_s=seconds,
        train_samples_per_s=len(train) / seconds,
        padding_efficiency=1.0,
        device="cpu",
        world_size=1,
        is_main_process=True,
        labels=labels,
    )

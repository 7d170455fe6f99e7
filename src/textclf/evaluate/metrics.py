"""Pure metric functions over gold labels and a probability matrix (columns in ``labels`` order).

No I/O, no plotting: every function takes arrays in and returns plain Python values (floats, lists,
dicts) that serialize to JSON as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    auc,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from textclf.errors import DataError

# Probabilities are clipped before log_loss so a confidently wrong 0.0 gives a large finite value.
_LOG_EPS = 1e-7


def encode_labels(y_true: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Gold label names → column indices; an unknown label is a data error, not a silent miss."""
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({str(y) for y in y_true if y not in index})
    if unknown:
        raise DataError(f"gold labels {unknown[:5]} are not among the model's labels {list(labels)}")
    return np.asarray([index[y] for y in y_true], dtype=np.int64)


def _check_proba(proba: np.ndarray, n: int, labels: Sequence[str]) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (n, len(labels)):
        raise ValueError(f"proba has shape {proba.shape}, expected ({n}, {len(labels)})")
    return proba


def classification_metrics(y_true: Sequence[str], proba: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, log loss, per-class P/R/F1/support and the confusion matrix.

    Prediction is the argmax. Per-class scores are reported for every label; a class absent from
    ``y_true`` (or never predicted) gets 0 by ``zero_division=0`` rather than a warning or NaN.
    Macro/weighted F1 average over the labels that occur (gold or predicted), so a test set that
    lacks a class is not penalized for it. With ``n == 0`` every score is ``None``.
    """
    labels = list(labels)
    y = encode_labels(y_true, labels)
    proba = _check_proba(proba, len(y), labels)
    k = len(labels)
    out: dict[str, Any] = {"n": len(y), "labels": labels}
    if len(y) == 0:
        out.update(accuracy=None, macro_f1=None, weighted_f1=None, log_loss=None)
        for lab in labels:
            out.update(
                {f"precision_{lab}": None, f"recall_{lab}": None, f"f1_{lab}": None, f"support_{lab}": 0}
            )
        out["confusion_matrix"] = [[0] * k for _ in range(k)]
        return out
    pred = proba.argmax(axis=1)
    idx = list(range(k))
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=idx, zero_division=0)
    out["accuracy"] = float(accuracy_score(y, pred))
    out["macro_f1"] = _macro_f1(y, pred)
    out["weighted_f1"] = float(f1_score(y, pred, average="weighted", zero_division=0))
    clipped = np.clip(proba, _LOG_EPS, 1.0)
    out["log_loss"] = float(log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=idx))
    for i, lab in enumerate(labels):
        out[f"precision_{lab}"] = float(prec[i])
        out[f"recall_{lab}"] = float(rec[i])
        out[f"f1_{lab}"] = float(f1[i])
        out[f"support_{lab}"] = int(sup[i])
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=idx).astype(int).tolist()
    return out


def _macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    # labels=None: sklearn averages over the union of gold and predicted labels.
    return float(f1_score(y, pred, average="macro", zero_division=0))


def reliability_bins(y_true_idx: Sequence[int], proba: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """Top-label reliability data: per equal-width confidence bin ``(lo, hi]``, its count,
    mean confidence and accuracy.

    Empty bins report ``count=0`` and ``None`` for confidence and accuracy.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    y = np.asarray(y_true_idx, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = proba.max(axis=1) if len(y) else np.zeros(0)
    correct = (proba.argmax(axis=1) == y) if len(y) else np.zeros(0, dtype=bool)
    # right=True gives (lo, hi] bins; a confidence of exactly 0 (impossible for a softmax) joins bin 0.
    which = np.clip(np.digitize(conf, edges, right=True) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = which == b
        count = int(mask.sum())
        bins.append(
            {
                "bin": b,
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "mean_confidence": float(conf[mask].mean()) if count else None,
                "accuracy": float(correct[mask].mean()) if count else None,
            }
        )
    return bins


def expected_calibration_error(y_true_idx: Sequence[int], proba: np.ndarray, n_bins: int) -> float | None:
    """Top-label ECE: sum over bins of ``count/n * |accuracy - mean confidence|``; ``None`` when n == 0."""
    bins = reliability_bins(y_true_idx, proba, n_bins)
    n = sum(b["count"] for b in bins)
    if n == 0:
        return None
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["mean_confidence"]) for b in bins if b["count"]))


def binary_curves(
    y_true: Sequence[str], proba: np.ndarray, labels: Sequence[str], positive_label: str | None = None
) -> dict[str, Any]:
    """PR and ROC curves (+ average precision, PR AUC, ROC AUC) for a two-class problem.

    ``positive_label`` defaults to the last label. AUCs are ``None`` when the gold labels hold only
    one class (the curves are then undefined).
    """
    labels = list(labels)
    if len(labels) != 2:
        raise ValueError(f"binary_curves needs exactly two labels, got {labels}")
    positive = labels[-1] if positive_label is None else positive_label
    if positive not in labels:
        raise ValueError(f"positive label {positive!r} is not one of {labels}")
    y = encode_labels(y_true, labels)
    proba = _check_proba(proba, len(y), labels)
    pos = labels.index(positive)
    y_bin = (y == pos).astype(int)
    score = proba[:, pos]
    out: dict[str, Any] = {"positive_label": positive, "n": len(y)}
    if len(set(y_bin.tolist())) < 2:
        out.update(roc_auc=None, average_precision=None, pr_auc=None, roc=None, pr=None)
        return out
    fpr, tpr, roc_thr = roc_curve(y_bin, score)
    precision, recall, pr_thr = precision_recall_curve(y_bin, score)
    out["roc_auc"] = float(roc_auc_score(y_bin, score))
    out["average_precision"] = float(average_precision_score(y_bin, score))
    out["pr_auc"] = float(auc(recall, precision))
    # sklearn's first ROC threshold is +inf ("predict nothing"); 1.0 is the same cut for probabilities.
    out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": np.minimum(roc_thr, 1.0).tolist()}
    # precision/recall have one more point than thresholds (the end point recall=0, precision=1).
    out["pr"] = {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "threshold": [*pr_thr.tolist(), 1.0],
    }
    return out


# --------------------------------------------------------------------------- slices
def length_slice_names(length_buckets: Sequence[int]) -> list[str]:
    """Names for the length slices, e.g. (20, 50) → ``len_le_20``, ``len_21_50``, ``len_gt_50``."""
    names, lo = [], 0
    for hi in length_buckets:
        names.append(f"len_le_{hi}" if lo == 0 else f"len_{lo + 1}_{hi}")
        lo = hi
    names.append(f"len_gt_{lo}")
    return names


def length_slice_index(texts: Sequence[str], length_buckets: Sequence[int]) -> np.ndarray:
    """Index into :func:`length_slice_names` for each text (length in characters)."""
    lengths = np.asarray([len(t) for t in texts], dtype=np.int64)
    # right=True: a length equal to a bound belongs to the bucket that bound closes.
    return np.digitize(lengths, np.asarray(length_buckets, dtype=np.int64), right=True)


def _negation_pattern(words: Sequence[str]) -> re.Pattern[str]:
    # ASCII words match whole words only ("not" must not hit "nothing"); CJK has no word boundaries.
    parts = [rf"\b{re.escape(w)}\b" if w.isascii() and w.isalnum() else re.escape(w) for w in words if w]
    return re.compile("|".join(parts), flags=re.IGNORECASE)


def has_negation(texts: Sequence[str], negation_words: Sequence[str]) -> np.ndarray:
    """Boolean mask: the text contains at least one negation word."""
    if not any(negation_words):
        return np.zeros(len(texts), dtype=bool)
    pattern = _negation_pattern(negation_words)
    return np.asarray([pattern.search(t) is not None for t in texts], dtype=bool)


def _slice_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    n = int(len(y))
    if n == 0:
        return {"n": 0, "accuracy": None, "macro_f1": None}
    return {
        "n": n,
        "accuracy": float((y == pred).mean()),
        "macro_f1": _macro_f1(y, pred),
    }


def slice_metrics(
    texts: Sequence[str],
    y_true: Sequence[str],
    proba: np.ndarray,
    labels: Sequence[str],
    length_buckets: Sequence[int],
    negation_words: Sequence[str],
    truncated: Sequence[bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per slice ``{"n", "accuracy", "macro_f1"}``: length buckets, has/no negation, truncated.

    Macro-F1 in a slice averages over the labels occurring in it (gold or predicted), as in
    :func:`classification_metrics`. An empty slice reports ``n=0`` and ``None`` scores. Negation
    slices are skipped when ``negation_words`` is empty; the truncated slice only when
    ``truncated`` is given.
    """
    labels = list(labels)
    y = encode_labels(y_true, labels)
    proba = _check_proba(proba, len(y), labels)
    if len(texts) != len(y):
        raise ValueError(f"{len(texts)} texts but {len(y)} labels")
    pred = proba.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    out: dict[str, dict[str, Any]] = {}
    which = length_slice_index(texts, length_buckets)
    for i, name in enumerate(length_slice_names(length_buckets)):
        mask = which == i
        out[name] = _slice_scores(y[mask], pred[mask])
    if any(negation_words):
        neg = has_negation(texts, negation_words)
        out["has_negation"] = _slice_scores(y[neg], pred[neg])
        out["no_negation"] = _slice_scores(y[~neg], pred[~neg])
    if truncated is not None:
        trunc = np.asarray(truncated, dtype=bool)
        out["truncated"] = _slice_scores(y[trunc], pred[trunc])
    return out

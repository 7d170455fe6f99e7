"""The one place classification metrics are defined. Training's ``compute_metrics``, the evaluate
stage and the gate all call these functions, so they report the same number for the same predictions.

Convention: labels are encoded as column indices into the model's label list (the configured labels),
and **macro-F1 averages over every one of those labels** — a class with no gold and no predicted
example counts as F1 = 0 (scikit-learn's ``labels=range(k), zero_division=0``). A test split that
lacks a class therefore scores lower than one that has it: the label set is part of the task.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
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

_LOG_EPS = 1e-7  # probabilities are clipped so a confidently wrong 0.0 gives a large finite log loss


def encode_labels(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Label names → indices into ``labels``; an unknown name is a data error, not a silent miss."""
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted({str(v) for v in values if v not in index})
    if unknown:
        raise DataError(f"labels {unknown[:5]} are not among the model's labels {list(labels)}")
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(accuracy_score(y, pred))


def macro_f1(y: np.ndarray, pred: np.ndarray, n_labels: int) -> float:
    """Macro-F1 over all ``n_labels`` classes (see the module docstring)."""
    return float(f1_score(y, pred, labels=np.arange(n_labels), average="macro", zero_division=0))


def class_recalls(y: np.ndarray, pred: np.ndarray, n_labels: int) -> list[float | None]:
    """Recall per class; ``None`` for a class without gold examples (recall undefined)."""
    cm = confusion_matrix(y, pred, labels=np.arange(n_labels))
    support = cm.sum(axis=1)
    return [float(cm[i, i] / support[i]) if support[i] else None for i in range(n_labels)]


def classification_metrics(y_true: Sequence[str], proba: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, log loss, per-class P/R/F1/support and the confusion matrix
    (prediction = argmax of ``proba``, columns in ``labels`` order)."""
    labels = list(labels)
    y = encode_labels(y_true, labels)
    proba = np.asarray(proba, dtype=np.float64).reshape(len(y), len(labels))
    if not len(y):
        raise DataError("no examples to score")
    k = len(labels)
    pred = proba.argmax(axis=1)
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=np.arange(k), zero_division=0)
    clipped = np.clip(proba, _LOG_EPS, 1.0)
    out: dict[str, Any] = {
        "n": len(y),
        "labels": labels,
        "accuracy": accuracy(y, pred),
        "macro_f1": macro_f1(y, pred, k),
        "weighted_f1": float(f1_score(y, pred, labels=np.arange(k), average="weighted", zero_division=0)),
        "log_loss": float(log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=np.arange(k))),
        "confusion_matrix": confusion_matrix(y, pred, labels=np.arange(k)).astype(int).tolist(),
    }
    for i, lab in enumerate(labels):
        out[f"precision_{lab}"] = float(prec[i])
        out[f"recall_{lab}"] = float(rec[i])
        out[f"f1_{lab}"] = float(f1[i])
        out[f"support_{lab}"] = int(sup[i])
    return out


# --------------------------------------------------------------------------- calibration
def reliability_bins(y: np.ndarray, proba: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """Top-label reliability per equal-width confidence bin ``(lo, hi]``: count, mean confidence,
    accuracy (``None`` for empty bins)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    which = np.clip(np.digitize(conf, edges, right=True) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        bins.append(
            {
                "bin": b,
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": n,
                "mean_confidence": float(conf[mask].mean()) if n else None,
                "accuracy": float(correct[mask].mean()) if n else None,
            }
        )
    return bins


def expected_calibration_error(bins: Sequence[dict[str, Any]]) -> float:
    """Top-label ECE: sum over bins of ``count/n * |accuracy - mean confidence|``."""
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["mean_confidence"]) for b in bins if b["count"]))


# --------------------------------------------------------------------------- curves
def one_vs_rest_curves(y: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """ROC and PR curves of every class against the rest, whatever the number of classes.

    Returns per-class ``roc_auc_<label>`` / ``average_precision_<label>`` (``None`` when the class is
    absent from ``y``), their macro means, and long-format point lists with a ``class`` column.
    """
    out: dict[str, Any] = {"roc": [], "pr": []}
    aucs, aps = [], []
    for j, lab in enumerate(labels):
        target = (y == j).astype(int)
        if target.min() == target.max():  # the class is absent (or alone): curves undefined
            out[f"roc_auc_{lab}"] = out[f"average_precision_{lab}"] = None
            continue
        score = proba[:, j]
        fpr, tpr, _ = roc_curve(target, score)
        precision, recall, _ = precision_recall_curve(target, score)
        out["roc"] += [
            {"class": lab, "fpr": float(a), "tpr": float(b)} for a, b in zip(fpr, tpr, strict=True)
        ]
        out["pr"] += [
            {"class": lab, "recall": float(r), "precision": float(p)}
            for r, p in zip(recall, precision, strict=True)
        ]
        out[f"roc_auc_{lab}"] = float(roc_auc_score(target, score))
        out[f"average_precision_{lab}"] = float(average_precision_score(target, score))
        aucs.append(out[f"roc_auc_{lab}"])
        aps.append(out[f"average_precision_{lab}"])
    out["roc_auc_macro"] = float(np.mean(aucs)) if aucs else None
    out["average_precision_macro"] = float(np.mean(aps)) if aps else None
    return out


# --------------------------------------------------------------------------- slices
def _length_names(buckets: Sequence[int]) -> list[str]:
    names, lo = [], 0
    for hi in buckets:
        names.append(f"len_le_{hi}" if lo == 0 else f"len_{lo + 1}_{hi}")
        lo = hi
    return [*names, f"len_gt_{lo}"]


def _negation_pattern(words: Sequence[str]) -> re.Pattern[str]:
    # ASCII words match whole words only ("not" must not hit "nothing"); CJK has no word boundaries.
    parts = [rf"\b{re.escape(w)}\b" if w.isascii() and w.isalnum() else re.escape(w) for w in words if w]
    return re.compile("|".join(parts), flags=re.IGNORECASE)


def slice_masks(
    texts: Sequence[str], length_buckets: Sequence[int], negation_words: Sequence[str]
) -> dict[str, np.ndarray]:
    """Boolean masks of the evaluation slices: length buckets (characters) and has/no negation."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    which = np.digitize(lengths, np.asarray(length_buckets, dtype=np.int64), right=True)
    masks = {name: which == i for i, name in enumerate(_length_names(length_buckets))}
    if any(negation_words):
        pattern = _negation_pattern(negation_words)
        neg = np.fromiter((pattern.search(t) is not None for t in texts), dtype=bool, count=len(texts))
        masks["has_negation"], masks["no_negation"] = neg, ~neg
    return masks


def slice_metrics(
    masks: dict[str, np.ndarray], y: np.ndarray, pred: np.ndarray, n_labels: int
) -> dict[str, dict[str, Any]]:
    """Per slice ``{"n", "accuracy", "macro_f1"}``; an empty slice reports ``n=0`` only."""
    out: dict[str, dict[str, Any]] = {}
    for name, mask in masks.items():
        n = int(mask.sum())
        out[name] = (
            {
                "n": n,
                "accuracy": accuracy(y[mask], pred[mask]),
                "macro_f1": macro_f1(y[mask], pred[mask], n_labels),
            }
            if n
            else {"n": 0}
        )
    return out

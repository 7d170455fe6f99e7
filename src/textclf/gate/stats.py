"""Paired tests for two classifiers scored on the same examples (integer-coded labels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from textclf.evaluate.metrics import macro_f1

_BOOTSTRAP_CELLS = 5_000_000  # resamples x examples held in memory at once (~40 MB of int64)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test; ``b``: champion right, challenger wrong; ``c``: the reverse."""

    n: int
    b: int
    c: int
    p_value: float


def mcnemar_exact(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> McNemarResult:
    """Two-sided exact binomial test on the discordant pairs (b, c) with p = 0.5."""
    b = int(np.sum(champion_correct & ~challenger_correct))
    c = int(np.sum(~champion_correct & challenger_correct))
    # No discordant pair: no evidence either way (binomtest refuses n=0).
    p = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5).pvalue)
    return McNemarResult(n=len(champion_correct), b=b, c=c, p_value=min(p, 1.0))


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of macro-F1(challenger) − macro-F1(champion): point and percentile interval."""

    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    n_resamples: int


def macro_f1_of_confusions(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 of a stack (r, k, k) of confusion matrices, vectorized, with the convention of
    :func:`textclf.evaluate.metrics.macro_f1`: every class counts, F1 = 0 where undefined."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    denom = cm.sum(axis=-1) + cm.sum(axis=-2)  # 2tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0).mean(axis=-1)


def paired_bootstrap_macro_f1(
    gold: np.ndarray,
    pred_challenger: np.ndarray,
    pred_champion: np.ndarray,
    n_labels: int,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> BootstrapResult:
    """Resample examples with replacement (the same indices for both models); percentile interval."""
    n, kk = len(gold), n_labels * n_labels
    rng = np.random.default_rng(seed)
    cells = (gold * n_labels + pred_challenger, gold * n_labels + pred_champion)
    deltas = np.empty(n_resamples)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        offset = (np.arange(rows) * kk)[:, None]  # one bincount builds every resample's matrix
        f1 = [
            macro_f1_of_confusions(
                np.bincount((cell[idx] + offset).ravel(), minlength=rows * kk).reshape(
                    rows, n_labels, n_labels
                )
            )
            for cell in cells
        ]
        deltas[start : start + rows] = f1[0] - f1[1]
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    point = macro_f1(gold, pred_challenger, n_labels) - macro_f1(gold, pred_champion, n_labels)
    return BootstrapResult(float(point), float(low), float(high), confidence, n_resamples)

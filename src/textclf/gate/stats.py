"""Paired statistics for comparing two classifiers on the same examples.

Everything works on integer-coded labels (column indices into ``labels``). Macro-F1 averages over
every label, with F1 = 2tp / (2tp + fp + fn) and 0 when a class is neither present nor predicted —
the same convention as ``textclf.evaluate.metrics`` (sklearn's ``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

# Upper bound on resamples x examples held in memory at once by the bootstrap (~40 MB of int64).
_BOOTSTRAP_CELLS = 5_000_000


def encode(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Label names → indices into ``labels``; an unknown name is a caller bug."""
    index = {lab: i for i, lab in enumerate(labels)}
    try:
        return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
    except KeyError as err:
        raise ValueError(f"label {err.args[0]!r} is not among {list(labels)}") from None


def confusion(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels, n_labels) counts, rows = gold, columns = predicted."""
    flat = np.bincount(gold * n_labels + pred, minlength=n_labels * n_labels)
    return flat.reshape(n_labels, n_labels)


def _f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 for one (k, k) or a stack (r, k, k) of confusion matrices."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    fn = cm.sum(axis=-1) - tp
    fp = cm.sum(axis=-2) - tp
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def accuracy(gold: np.ndarray, pred: np.ndarray) -> float | None:
    return float(np.mean(gold == pred)) if len(gold) else None


def macro_f1(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> float | None:
    if not len(gold):
        return None
    return float(_f1_from_confusion(confusion(gold, pred, n_labels)).mean())


def class_recalls(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> list[float | None]:
    """Recall per class; ``None`` for a class with no gold examples (recall undefined)."""
    cm = confusion(gold, pred, n_labels)
    support = cm.sum(axis=1)
    return [float(cm[i, i] / support[i]) if support[i] else None for i in range(n_labels)]


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test; ``b``: champion right, challenger wrong; ``c``: the reverse."""

    n: int
    b: int
    c: int
    p_value: float

    @property
    def challenger_better(self) -> bool:
        return self.c > self.b

    @property
    def challenger_worse(self) -> bool:
        return self.b > self.c

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> McNemarResult:
    """Two-sided exact binomial test on the discordant pairs (b, c) with p = 0.5."""
    champion_correct = np.asarray(champion_correct, dtype=bool)
    challenger_correct = np.asarray(challenger_correct, dtype=bool)
    b = int(np.sum(champion_correct & ~challenger_correct))
    c = int(np.sum(~champion_correct & challenger_correct))
    # No discordant pair: no evidence either way (binomtest refuses n=0).
    p = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(n=len(champion_correct), b=b, c=c, p_value=min(p, 1.0))


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of macro-F1(challenger) − macro-F1(champion), percentile interval."""

    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    n_resamples: int
    seed: int

    @property
    def significantly_worse(self) -> bool:
        return self.ci_high < 0.0

    @property
    def significantly_better(self) -> bool:
        return self.ci_low > 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap_macro_f1(
    gold: np.ndarray,
    pred_challenger: np.ndarray,
    pred_champion: np.ndarray,
    n_labels: int,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> BootstrapResult:
    """Resample examples with replacement (the same indices for both models) and take percentiles."""
    n = len(gold)
    if n == 0 or n_resamples < 1:
        raise ValueError("the paired bootstrap needs at least one example and one resample")
    rng = np.random.default_rng(seed)
    # Offsetting gold*k+pred by resample row lets one bincount build every confusion matrix at once.
    cell_ch = gold * n_labels + pred_challenger
    cell_cp = gold * n_labels + pred_champion
    kk = n_labels * n_labels
    deltas = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        offset = (np.arange(rows) * kk)[:, None]
        shape = (rows, n_labels, n_labels)
        cm_ch = np.bincount((cell_ch[idx] + offset).ravel(), minlength=rows * kk).reshape(shape)
        cm_cp = np.bincount((cell_cp[idx] + offset).ravel(), minlength=rows * kk).reshape(shape)
        deltas[start : start + rows] = _f1_from_confusion(cm_ch).mean(axis=1) - _f1_from_confusion(
            cm_cp
        ).mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    point = macro_f1(gold, pred_challenger, n_labels) - macro_f1(gold, pred_champion, n_labels)  # type: ignore[operator]
    return BootstrapResult(
        delta=float(point),
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )

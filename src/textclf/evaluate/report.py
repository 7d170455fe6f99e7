"""Evaluate predictions on the test split and write metrics, predictions, plots and DVC plot data.

Layout written under ``out_dir`` (``<p>`` is the prefix: "" for the transformer, "baseline_" for the
baseline)::

    metrics.json                 numbers only, for `dvc metrics show` / `dvc metrics diff`
    <p>report.json               everything (confusion matrix, reliability bins, slices, labels)
    <p>predictions.parquet       id, text, gold, predicted, correct, confidence, prob_<label>... [, truncated]
    <p>confusion_matrix.png, <p>calibration.png [, <p>pr_curve.png, <p>roc_curve.png]  (two classes)
    plots/<p>confusion.csv       actual,predicted (one row per example: DVC `confusion` template)
    plots/<p>calibration.csv     mean_confidence,accuracy,count,... per non-empty bin
    plots/<p>roc.csv, plots/<p>pr.csv   fpr,tpr,threshold / recall,precision,threshold (two classes)

The test split is read only by :func:`evaluate_model_and_baseline`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textclf.config import Config, EvaluateConfig
from textclf.data.io import write_csv
from textclf.errors import DataError
from textclf.evaluate import metrics as M
from textclf.evaluate import plots

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
TRANSFORMER = "transformer"
BASELINE = "baseline"
BASELINE_PREFIX = "baseline_"
SPLIT_COLUMNS = ("id", "text", "label")


# --------------------------------------------------------------------------- metrics.json
def numeric_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Keep only finite numbers (ints, floats) and dicts holding some; keys sorted.

    Lists (confusion matrix, curves), strings, ``None`` (empty slices) and NaN are dropped so the
    result is valid JSON that `dvc metrics` and MLflow both accept.
    """
    out: dict[str, Any] = {}
    for key in sorted(metrics, key=str):
        value = metrics[key]
        if isinstance(value, dict):
            sub = numeric_metrics(value)
            if sub:
                out[str(key)] = sub
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int | float | np.integer | np.floating):
            number = value.item() if isinstance(value, np.generic) else value
            if isinstance(number, float) and not math.isfinite(number):
                continue
            out[str(key)] = number
    return out


def flatten_metrics(metrics: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, float]:
    """Numeric leaves as one flat mapping, e.g. ``{"baseline.slices.len_le_20.accuracy": 0.9}``."""
    flat: dict[str, float] = {}
    for key, value in numeric_metrics(metrics).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}{sep}", sep=sep))
        else:
            flat[name] = float(value)
    return flat


def write_metrics_json(metrics: dict[str, Any], path: Path) -> Path:
    """Write the numeric part of ``metrics`` as sorted, indented JSON (same input ⇒ same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(numeric_metrics(metrics), indent=2, sort_keys=True, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _write_json(obj: Any, path: Path) -> Path:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- one split
def predictions_frame(
    ids: Sequence[Any],
    texts: Sequence[str],
    y_true: Sequence[str],
    proba: np.ndarray,
    labels: Sequence[str],
    truncated: Sequence[bool] | None = None,
) -> pd.DataFrame:
    """One row per example: id, text, gold, predicted, correct, confidence, prob_<label>...[, truncated]."""
    labels = list(labels)
    proba = np.asarray(proba, dtype=np.float64).reshape(len(texts), len(labels))
    pred_idx = proba.argmax(axis=1) if len(texts) else np.zeros(0, dtype=np.int64)
    predicted = [labels[i] for i in pred_idx]
    frame = pd.DataFrame(
        {
            "id": list(ids),
            "text": list(texts),
            "gold": [str(y) for y in y_true],
            "predicted": predicted,
        }
    )
    frame["correct"] = frame["gold"] == frame["predicted"]
    frame["confidence"] = proba.max(axis=1) if len(texts) else np.zeros(0)
    for j, lab in enumerate(labels):
        frame[f"prob_{lab}"] = proba[:, j]
    if truncated is not None:
        frame["truncated"] = np.asarray(truncated, dtype=bool)
    return frame


def _evaluate_split(
    texts: Sequence[str],
    ids: Sequence[Any],
    y_true: Sequence[str],
    proba: np.ndarray,
    labels: Sequence[str],
    cfg: EvaluateConfig,
    out_dir: Path,
    prefix: str,
    truncated: Sequence[bool] | None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    texts, ids, y_true, labels = list(texts), list(ids), [str(y) for y in y_true], list(labels)
    if not (len(texts) == len(ids) == len(y_true)):
        raise ValueError(f"lengths differ: {len(texts)} texts, {len(ids)} ids, {len(y_true)} labels")
    out_dir = Path(out_dir)
    plot_dir = out_dir / PLOTS_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    title = prefix.rstrip("_") or "model"
    files: dict[str, Path] = {}

    result = M.classification_metrics(y_true, proba, labels)
    y_idx = M.encode_labels(y_true, labels)
    proba = np.asarray(proba, dtype=np.float64)
    bins = M.reliability_bins(y_idx, proba, cfg.calibration_bins)
    result["ece"] = M.expected_calibration_error(y_idx, proba, cfg.calibration_bins)
    result["calibration_bins"] = bins
    result["slices"] = M.slice_metrics(
        texts, y_true, proba, labels, cfg.length_buckets, cfg.negation_words, truncated
    )
    if truncated is not None:
        result["truncated_fraction"] = float(np.mean(truncated)) if len(truncated) else None

    frame = predictions_frame(ids, texts, y_true, proba, labels, truncated)
    files[f"{prefix}predictions"] = out_dir / f"{prefix}predictions.parquet"
    frame.to_parquet(files[f"{prefix}predictions"], index=False)

    files[f"{prefix}confusion_matrix"] = plots.plot_confusion_matrix(
        result["confusion_matrix"],
        labels,
        out_dir / f"{prefix}confusion_matrix.png",
        f"{title}: confusion matrix",
    )
    files[f"{prefix}calibration"] = plots.plot_reliability(
        bins, result["ece"], out_dir / f"{prefix}calibration.png", f"{title}: reliability"
    )
    confusion = pd.DataFrame({"actual": frame["gold"], "predicted": frame["predicted"]})
    files[f"{prefix}confusion_csv"] = plot_dir / f"{prefix}confusion.csv"
    write_csv(confusion, files[f"{prefix}confusion_csv"])
    filled = [b for b in bins if b["count"]]
    calib = pd.DataFrame(filled, columns=["bin", "lower", "upper", "count", "mean_confidence", "accuracy"])
    files[f"{prefix}calibration_csv"] = plot_dir / f"{prefix}calibration.csv"
    write_csv(calib, files[f"{prefix}calibration_csv"])

    if len(labels) == 2:
        curves = M.binary_curves(y_true, proba, labels, cfg.positive_label)
        for key in ("roc_auc", "average_precision", "pr_auc"):
            result[key] = curves[key]
        result["positive_label"] = curves["positive_label"]
        if curves["roc"] is not None:
            files[f"{prefix}roc_curve"] = plots.plot_roc(curves, out_dir / f"{prefix}roc_curve.png", title)
            files[f"{prefix}pr_curve"] = plots.plot_pr(curves, out_dir / f"{prefix}pr_curve.png", title)
            files[f"{prefix}roc_csv"] = plot_dir / f"{prefix}roc.csv"
            write_csv(pd.DataFrame(curves["roc"])[["fpr", "tpr", "threshold"]], files[f"{prefix}roc_csv"])
            files[f"{prefix}pr_csv"] = plot_dir / f"{prefix}pr.csv"
            write_csv(
                pd.DataFrame(curves["pr"])[["recall", "precision", "threshold"]], files[f"{prefix}pr_csv"]
            )

    files[f"{prefix}report"] = _write_json(result, out_dir / f"{prefix}report.json")
    log.info(
        "%s: n=%d accuracy=%s macro_f1=%s ece=%s",
        title,
        result["n"],
        result["accuracy"],
        result["macro_f1"],
        result["ece"],
    )
    return result, files


def evaluate_split(
    texts: Sequence[str],
    ids: Sequence[Any],
    y_true: Sequence[str],
    proba: np.ndarray,
    labels: Sequence[str],
    cfg: EvaluateConfig,
    out_dir: Path,
    prefix: str = "",
    truncated: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Score one model's probabilities on one split; write predictions, plots and plot data to ``out_dir``.

    Returns the full metrics dict (including non-numeric parts: labels, confusion matrix,
    calibration bins); :func:`write_metrics_json` keeps only its numbers.
    """
    result, _ = _evaluate_split(texts, ids, y_true, proba, labels, cfg, out_dir, prefix, truncated)
    return result


# --------------------------------------------------------------------------- the evaluate stage
@dataclass(frozen=True)
class EvaluationResult:
    transformer: dict[str, Any]
    baseline: dict[str, Any] | None
    labels: list[str]
    n_test: int
    metrics_path: Path
    files: dict[str, Path] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """What metrics.json holds (before the numeric filter)."""
        return _combined(self.transformer, self.baseline)

    def flat_metrics(self, sep: str = ".") -> dict[str, float]:
        """Numeric metrics as one flat mapping, e.g. ``transformer.macro_f1``, ``baseline.accuracy``."""
        return flatten_metrics(self.metrics(), sep=sep)


def _combined(transformer: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {TRANSFORMER: transformer}
    if baseline is not None:
        out[BASELINE] = baseline
        deltas = {}
        for key in ("accuracy", "macro_f1"):
            t, b = transformer.get(key), baseline.get(key)
            if t is not None and b is not None:
                deltas[f"{key}_delta"] = float(t) - float(b)
        out["transformer_vs_baseline"] = deltas
    return out


def read_split(prepared_dir: Path, split: str) -> pd.DataFrame:
    """One prepared split (columns id, text, label), labels and texts as strings."""
    path = Path(prepared_dir) / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"prepared split not found: {path} (run the prepare stage first)")
    frame = pd.read_parquet(path)
    missing = [c for c in SPLIT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}; has {list(frame.columns)}")
    frame = frame[list(SPLIT_COLUMNS)].copy()
    frame["text"] = frame["text"].astype(str)
    frame["label"] = frame["label"].astype(str)
    return frame


def evaluate_model_and_baseline(
    cfg: Config, model_dir: Path, prepared_dir: Path, out_dir: Path
) -> EvaluationResult:
    """Score the trained model and the TF-IDF baseline on the test split; write ``out_dir/metrics.json``.

    The baseline is fit on the train split only (the transformer used val for early stopping, the
    baseline has nothing to tune). Labels and their order come from the model directory.
    """
    from textclf.evaluate.baseline import train_baseline
    from textclf.model.predictor import Predictor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = read_split(prepared_dir, "test")
    if test.empty:
        raise DataError(f"the test split in {prepared_dir} is empty")
    texts, ids, gold = test["text"].tolist(), test["id"].tolist(), test["label"].tolist()

    predictor = Predictor(model_dir)
    labels = list(predictor.labels)
    M.encode_labels(gold, labels)  # fail early, with the label names, before predicting
    log.info("evaluating %s on %d test rows", model_dir, len(test))
    proba, truncated = predictor.predict_proba(texts, batch_size=cfg.train.eval_batch_size)
    transformer, files = _evaluate_split(
        texts, ids, gold, proba, labels, cfg.evaluate, out_dir, "", truncated
    )

    baseline: dict[str, Any] | None = None
    if cfg.evaluate.baseline.enabled:
        train = read_split(prepared_dir, "train")
        model = train_baseline(train["text"].tolist(), train["label"].tolist(), cfg.evaluate.baseline, labels)
        baseline, baseline_files = _evaluate_split(
            texts, ids, gold, model.predict_proba(texts), labels, cfg.evaluate, out_dir, BASELINE_PREFIX, None
        )
        files.update(baseline_files)

    metrics_path = write_metrics_json(_combined(transformer, baseline), out_dir / METRICS_FILE)
    return EvaluationResult(
        transformer=transformer,
        baseline=baseline,
        labels=labels,
        n_test=len(test),
        metrics_path=metrics_path,
        files=files,
    )

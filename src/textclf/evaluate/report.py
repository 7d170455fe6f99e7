"""Score a model and the TF-IDF baseline on the test split; write metrics, predictions and plots.

Files under ``out_dir`` (``<p>`` is "" for the transformer, "baseline_" for the baseline); none of
them depends on the number of classes::

    metrics.json                 numbers only, for `dvc metrics show` / `dvc metrics diff`
    <p>report.json               everything (confusion matrix, reliability bins, slices, labels)
    <p>predictions.parquet       id, text, gold, predicted, correct, confidence, prob_<label>...
    plots/<p>confusion.csv       actual,predicted per example (DVC's confusion template)
    plots/<p>calibration.csv     per non-empty confidence bin
    plots/<p>roc.csv, <p>pr.csv  one-vs-rest curves of every class (long format, ``class`` column)
    plots/<p>*.png               confusion matrix, reliability diagram, ROC and PR curves
    variants/                    ONNX exports and parity.json (see textclf.evaluate.variants)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from textclf import contracts as C
from textclf.config import EvaluateConfig
from textclf.data.io import write_csv
from textclf.data.prepare import read_split
from textclf.evaluate import metrics as M
from textclf.evaluate import plots
from textclf.evaluate.variants import score_variants, write_parity
from textclf.model.ngram import train_ngram
from textclf.model.predictor import Predictor

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Only finite numbers and dicts holding some, keys sorted: what `dvc metrics` and MLflow accept."""
    out: dict[str, Any] = {}
    for key in sorted(metrics, key=str):
        value = metrics[key]
        if isinstance(value, dict):
            if sub := numeric_metrics(value):
                out[str(key)] = sub
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = value
    return out


def predictions_frame(test: pd.DataFrame, proba: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """One row per example: id, text, gold, predicted, correct, confidence, prob_<label>..."""
    frame = pd.DataFrame({"id": test["id"], "text": test["text"], "gold": test["label"]})
    frame["predicted"] = [labels[i] for i in proba.argmax(axis=1)]
    frame["correct"] = frame["gold"] == frame["predicted"]
    frame["confidence"] = proba.max(axis=1)
    for j, lab in enumerate(labels):
        frame[f"{C.PROB_PREFIX}{lab}"] = proba[:, j]
    return frame.reset_index(drop=True)


def score_split(
    test: pd.DataFrame,
    proba: np.ndarray,
    labels: Sequence[str],
    cfg: EvaluateConfig,
    out_dir: Path,
    prefix: str,
) -> dict[str, Any]:
    """Metrics, slices, calibration and curves of one model on ``test``; writes its files."""
    labels = list(labels)
    proba = np.asarray(proba, dtype=np.float64)
    result = M.classification_metrics(test["label"].tolist(), proba, labels)
    y = M.encode_labels(test["label"].tolist(), labels)
    pred = proba.argmax(axis=1)
    bins = M.reliability_bins(y, proba, cfg.calibration_bins)
    curves = M.one_vs_rest_curves(y, proba, labels)
    masks = M.slice_masks(test["text"].tolist(), cfg.length_buckets, cfg.negation_words)
    result.update(
        ece=M.expected_calibration_error(bins),
        calibration_bins=bins,
        slices=M.slice_metrics(masks, y, pred, len(labels)),
        **{k: v for k, v in curves.items() if k not in ("roc", "pr")},
    )
    frame = predictions_frame(test, proba, labels)
    frame.to_parquet(out_dir / f"{prefix}{C.PREDICTIONS_FILE}", index=False)
    plot_dir = out_dir / PLOTS_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    write_csv(
        frame[["gold", "predicted"]].set_axis(["actual", "predicted"], axis=1),
        plot_dir / f"{prefix}confusion.csv",
    )
    write_csv(pd.DataFrame([b for b in bins if b["count"]]), plot_dir / f"{prefix}calibration.csv")
    write_csv(pd.DataFrame(curves["roc"], columns=["class", "fpr", "tpr"]), plot_dir / f"{prefix}roc.csv")
    write_csv(
        pd.DataFrame(curves["pr"], columns=["class", "recall", "precision"]), plot_dir / f"{prefix}pr.csv"
    )
    title = prefix.rstrip("_") or "model"
    plots.confusion_matrix(
        result["confusion_matrix"], labels, plot_dir / f"{prefix}confusion_matrix.png", title
    )
    plots.reliability(bins, result["ece"], plot_dir / f"{prefix}calibration.png", title)
    plots.curves(
        curves["roc"], "fpr", "tpr", plot_dir / f"{prefix}roc_curve.png", f"{title}: ROC (one vs rest)"
    )
    plots.curves(
        curves["pr"], "recall", "precision", plot_dir / f"{prefix}pr_curve.png", f"{title}: PR (one vs rest)"
    )
    C.write_json(result, out_dir / f"{prefix}report.json")
    log.info(
        "%s: n=%d accuracy=%.4f macro_f1=%.4f", title, result["n"], result["accuracy"], result["macro_f1"]
    )
    return result


@dataclass(frozen=True)
class Evaluation:
    transformer: dict[str, Any]
    baseline: dict[str, Any] | None
    variants: dict[str, dict[str, Any]]

    def metrics(self) -> dict[str, Any]:
        """What metrics.json holds (before the numeric filter)."""
        out: dict[str, Any] = {"transformer": self.transformer}
        if self.baseline is not None:
            out["baseline"] = self.baseline
            out["transformer_vs_baseline"] = {
                f"{k}_delta": self.transformer[k] - self.baseline[k] for k in ("accuracy", "macro_f1")
            }
        if self.variants:  # passed as 0/1: `dvc metrics` and MLflow take numbers only
            out["variants"] = {n: row | {"passed": int(row["passed"])} for n, row in self.variants.items()}
        return out


def evaluate_model_and_baseline(
    cfg: EvaluateConfig, batch_size: int, model_dir: Path, prepared_dir: Path, out_dir: Path
) -> Evaluation:
    """Score the trained model and the TF-IDF baseline (fit on train only) on the test split;
    ``batch_size``: the model's, on test (train.eval_batch_size).

    The only reader of the test split in the pipeline. Labels and their order come from the model.
    """

    out_dir.mkdir(parents=True, exist_ok=True)
    test = read_split(prepared_dir, "test")
    predictor = Predictor(model_dir)
    labels = predictor.labels
    M.encode_labels(test["label"].tolist(), labels)  # fail early, naming the labels, before predicting
    log.info("evaluating %s on %d test rows", model_dir, len(test))
    proba, truncated = predictor.predict_proba(test["text"].tolist(), batch_size=batch_size)
    transformer = score_split(test, proba, labels, cfg, out_dir, "")
    transformer["truncated_fraction"] = float(np.mean(truncated))
    baseline = None
    if cfg.baseline.enabled:
        train = read_split(prepared_dir, "train")
        model = train_ngram(train["text"].tolist(), train["label"].tolist(), cfg.baseline, labels)
        baseline = score_split(
            test, model.predict_proba(test["text"].tolist()), labels, cfg, out_dir, C.BASELINE_PREFIX
        )
    names = tuple(n for n in cfg.variants.names if n in predictor.family.variants)
    if names != tuple(cfg.variants.names):
        log.info(
            "variants: the %s family has none of %s",
            predictor.family.name,
            sorted(set(cfg.variants.names) - set(names)),
        )
    variants = write_parity({}, out_dir / C.VARIANTS_DIR)  # a DVC output, also with no variant
    if names:
        variants = score_variants(
            cfg.variants.model_copy(update={"names": names}),
            model_dir,
            out_dir / C.VARIANTS_DIR,
            test["text"].tolist(),
            test["label"].tolist(),
            batch_size,
            fp32_proba=proba if predictor.device.type == "cpu" else None,
        )
    result = Evaluation(transformer, baseline, variants)
    C.write_json(numeric_metrics(result.metrics()), out_dir / C.METRICS_FILE)
    return result

"""Re-score a registered version on the CURRENT test split and gather the gate's evidence about it.

The version's logged pyfunc model carries the Hugging Face model directory as its ``model_dir``
artifact; it is downloaded and run through :class:`Predictor`, so champion and challenger are scored
the same way, on the same rows, now. Around the predictions: slices, the same run's baseline, serving
measurements (single-text p95 latency on CPU, size on disk), behavioural checks and the ids the model
trained on (``train_ids.txt`` logged on its run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from textclf import contracts as C
from textclf.config import Config
from textclf.evaluate import metrics as M
from textclf.evaluate.variants import latency_p95_ms
from textclf.gate.behaviour import run_behaviour_checks
from textclf.gate.decision import Evidence
from textclf.serving.release import ServedModel
from textclf.tracking.run import BASELINE_MACRO_F1, TAG_DIGEST_PREFIX, TRAIN_IDS_ARTIFACT

log = logging.getLogger(__name__)


def read_train_ids(c: MlflowClient, run_id: str, tmp: Path) -> frozenset[str] | None:
    """The ids the run trained on, or None when it logged none (a foreign or older model)."""
    try:
        path = c.download_artifacts(run_id, TRAIN_IDS_ARTIFACT, str(tmp))
    except (MlflowException, OSError):
        return None
    return frozenset(Path(path).read_text(encoding="utf-8").split())


def read_baseline_predictions(
    c: MlflowClient, run_id: str, ids: list[str], tmp: Path
) -> tuple[str, ...] | None:
    """The run's baseline predictions on ``ids`` (evaluate logged them), or None when it has none for
    every one of them (another test split, or no baseline)."""
    artifact = f"{C.ARTIFACT_EVAL_DIR}/{C.BASELINE_PREFIX}{C.PREDICTIONS_FILE}"
    try:
        frame = pd.read_parquet(c.download_artifacts(run_id, artifact, str(tmp)), columns=["id", "predicted"])
    except (MlflowException, OSError):
        return None
    by_id = dict(zip(frame["id"], frame["predicted"], strict=True))
    return tuple(by_id[i] for i in ids) if all(i in by_id for i in ids) else None


def model_size_mb(model_dir: Path) -> float:
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()) / 2**20


@dataclass(frozen=True)
class Scored:
    evidence: Evidence
    run_id: str | None
    notes: tuple[str, ...]


def score_version(
    cfg: Config,
    c: MlflowClient,
    served: ServedModel,
    test: pd.DataFrame,
    test_digest: str,
    work_dir: Path,
    measure: bool,
) -> Scored:
    """Re-score a registered version, loaded as ``served``, on ``test``. ``measure=False`` skips what
    only the challenger needs (baseline, serving budget, behaviour): a champion contributes predictions
    and training ids."""

    version, predictor, model_dir = served.version, served.predictor, served.model_dir
    mv = c.get_model_version(cfg.mlflow.registered_model, version)
    work_dir.mkdir(parents=True, exist_ok=True)
    labels = predictor.labels
    M.encode_labels(test["label"].tolist(), labels)  # the test labels must be the model's
    texts = test["text"].tolist()
    proba, _ = predictor.predict_proba(texts, batch_size=cfg.train.eval_batch_size)
    notes: list[str] = []
    run = c.get_run(mv.run_id) if mv.run_id else None
    train_ids = read_train_ids(c, mv.run_id, work_dir) if run else None
    if train_ids is None:
        notes.append(
            f"v{version}: its training data is unknown, so no test example was excluded as seen by it"
        )
    if run and run.data.tags.get(TAG_DIGEST_PREFIX + "test") not in (None, test_digest):
        notes.append(
            f"v{version} was evaluated on another test split; the gate re-scored it on the current one"
        )
    extra: dict[str, object] = {}
    if measure:
        baseline = run.data.metrics.get(BASELINE_MACRO_F1) if run else None
        gate = cfg.gate
        baseline_predicted = (
            read_baseline_predictions(c, mv.run_id, test["id"].tolist(), work_dir) if run else None
        )
        extra = {
            "baseline_macro_f1": baseline,
            "baseline_predicted": baseline_predicted,
            "latency_p95_ms": latency_p95_ms(
                predictor.predict_proba, texts[: gate.latency_texts], gate.latency_warmup
            ),
            "model_size_mb": model_size_mb(model_dir),
            "behaviour": run_behaviour_checks(predictor.predict_proba, labels, cfg=gate.behaviour),
        }
    masks = M.slice_masks(texts, cfg.evaluate.length_buckets, cfg.evaluate.negation_words)
    ids = test["id"].tolist()
    evidence = Evidence(
        version=version,
        labels=tuple(labels),
        ids=tuple(ids),
        gold=tuple(test["label"]),
        predicted=tuple(labels[i] for i in proba.argmax(axis=1)),
        train_ids=train_ids or frozenset(),
        slices={name: frozenset(np.asarray(ids)[mask]) for name, mask in masks.items()},
        **extra,  # type: ignore[arg-type]
    )
    return Scored(evidence, mv.run_id, tuple(notes))

"""One MLflow run per training, alive from the train stage to the evaluate stage.

``train`` opens it (:func:`training_run`): effective params, lineage tags, the train/val datasets, system
metrics, a metric point per logging step while it trains (:func:`step_metrics`), then the pyfunc model
and the training ids. ``evaluate`` re-opens it by id (:func:`log_evaluation`): test metrics for the model
and the baseline, the test dataset, plots and reports. A stage that fails marks the run FAILED.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from textclf import contracts as C
from textclf.config import Config, PathsConfig
from textclf.data.prepare import split_digest
from textclf.model.base_model import read_provenance
from textclf.tracking.lineage import lineage_tags
from textclf.tracking.pyfunc import log_pyfunc_model
from textclf.tracking.store import configure_mlflow

log = logging.getLogger(__name__)

TRAIN_IDS_ARTIFACT = "train_ids.txt"  # prepared ids the model trained on: the gate excludes them
TAG_DIGEST_PREFIX = "textclf.digest."  # + split name: textclf.data.prepare.split_digest of the split
BASELINE_MACRO_F1 = f"{C.BASELINE_TEST_PREFIX}macro_f1"
CONTEXTS = {"train": "train", "val": "validation", "test": "test"}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return out


def _log_dataset(frame: pd.DataFrame, split: str, source: str) -> None:
    from mlflow.data.pandas_dataset import from_pandas

    with warnings.catch_warnings():  # a relative path matches two source kinds; MLflow picks one and warns
        warnings.simplefilter("ignore")
        mlflow.log_input(
            from_pandas(frame, source=source, name=split, targets="label"), context=CONTEXTS[split]
        )
    mlflow.set_tag(TAG_DIGEST_PREFIX + split, split_digest(frame))


def step_metrics() -> Any:
    """A TrainerCallback logging every Trainer log line (loss, learning rate, grad norm; val metrics per
    epoch) as MLflow metrics at its global step, while the training runs."""
    from transformers import TrainerCallback

    class StepMetrics(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
        ) -> None:
            if state.is_world_process_zero and logs:
                numbers = {
                    k.replace("eval_", "val_"): float(v)
                    for k, v in logs.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                }
                mlflow.log_metrics(numbers, step=state.global_step)
                log.info("step %d: %s", state.global_step, {k: round(v, 4) for k, v in numbers.items()})

    return StepMetrics()


@contextmanager
def training_run(
    cfg: Config, root: Path, run_id: str | None, splits: Mapping[str, pd.DataFrame]
) -> Iterator[str]:
    """Start (or, after a crash, resume ``run_id``) the training's run; yields its id."""
    experiment_id = configure_mlflow(cfg, root)
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, log_system_metrics=True) as run:
        if run_id is None:
            mlflow.set_tags(lineage_tags(cfg, root))
            mlflow.log_params(
                flatten({s: cfg.model_dump(mode="json")[s] for s in ("data", "prepare", "model", "train")})
            )
            for split, frame in splits.items():
                _log_dataset(frame, split, (cfg.paths.prepared / C.split_file(split)).as_posix())
            # the train split itself: monitoring compares traffic with it, wherever the champion came from
            mlflow.log_artifact(
                str(root / cfg.paths.prepared / C.split_file("train")), C.ARTIFACT_PREPARED_DIR
            )
        yield run.info.run_id


def base_model_tags(model_dir: Path) -> dict[str, str]:
    """The base model's provenance.json (source, wheel sha256, upstream model, licence) as
    ``textclf.base_model.*`` tags; empty for a model trained from scratch."""

    return {f"textclf.base_model.{k}": str(v) for k, v in flatten(read_provenance(model_dir)).items()}


def log_model(model_dir: Path, train_ids: list[str], examples: list[str], batch_size: int) -> str:
    """The pyfunc model and the training ids, on the active run; returns the model URI (register it)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / TRAIN_IDS_ARTIFACT
        path.write_text("".join(f"{i}\n" for i in train_ids), encoding="utf-8")
        mlflow.log_artifact(str(path))
    return log_pyfunc_model(model_dir, examples, batch_size=batch_size).model_uri


@contextmanager
def reopened_run(cfg: Config, root: Path, run_id: str) -> Iterator[None]:
    """Re-open the training's run for the evaluate stage (marked FAILED if the block raises)."""
    configure_mlflow(cfg, root)
    with mlflow.start_run(run_id=run_id):
        yield


def log_evaluation(
    paths: PathsConfig,
    root: Path,
    test: pd.DataFrame,
    metrics: Mapping[str, Mapping[str, Any]],
    model_uri: str,
) -> None:
    """On the active run: test metrics (``test_*``, ``baseline_test_*``), the test dataset, reports."""
    model_id = model_uri.removeprefix("models:/")
    _log_dataset(test, "test", (paths.prepared / C.split_file("test")).as_posix())
    for source, values in metrics.items():
        prefix = C.TEST_PREFIX if source == "transformer" else f"{source}_{C.TEST_PREFIX}"
        numbers = {
            f"{prefix}{k}": float(v)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        mlflow.log_metrics(numbers, model_id=model_id if source == "transformer" else None)
    mlflow.log_artifacts(str(root / paths.evaluation), C.ARTIFACT_EVAL_DIR)
    for target in ("raw", "prepared"):
        mlflow.log_artifacts(str(root / paths.reports / target), f"validation/{target}")
    mlflow.log_artifact(str(root / paths.prepared / C.MANIFEST_FILE), C.ARTIFACT_PREPARED_DIR)

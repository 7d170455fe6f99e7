"""The train and evaluate DVC stages: wiring of library parts, no ML logic of their own.

``train`` writes the model directory and ``paths.training/history.json`` (deterministic: it is a DVC
output) plus ``timings.json`` (wall time, samples/s: not a DVC output). ``evaluate`` scores the model
and the TF-IDF baseline on the test split, then records the whole training in ONE MLflow run: params,
per-epoch metrics, test metrics, datasets, lineage tags, artifacts and the pyfunc model.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textclf.config import Config
from textclf.data.prepare import load_splits

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
TIMINGS_FILE = "timings.json"
RUN_FILE = "mlflow_run.json"


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def kill_after_steps_callback(steps: int) -> Any:
    """A TrainerCallback that SIGKILLs its own process once ``steps`` optimizer steps are done: a
    real crash (no cleanup, no exception handling), used to prove a retried training resumes."""
    import signal

    from transformers import TrainerCallback

    class _KillAfter(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= steps:
                log.warning("killing the training process after %d steps (kill hook)", state.global_step)
                os.kill(os.getpid(), signal.SIGKILL)
            return control

    return _KillAfter()


def run_train(
    cfg: Config,
    root: Path,
    fault_after_steps: int | None = None,
    kill_after_steps: int | None = None,
) -> dict[str, Any] | None:
    """Train on the prepared train split, select on val. Every torchrun rank calls this; rank 0 writes.

    Returns the timings record on the main process, None on the other ranks.
    """
    from textclf.train.trainer import train_model

    callbacks = [kill_after_steps_callback(kill_after_steps)] if kill_after_steps else []
    splits = load_splits(root / cfg.paths.prepared, ("train", "val"))
    result = train_model(
        cfg,
        splits["train"],
        splits["val"],
        output_dir=root / cfg.paths.model,
        checkpoint_dir=root / cfg.paths.checkpoints,
        callbacks=callbacks,
        fault_after_steps=fault_after_steps,
    )
    if not result.is_main_process:
        return None
    out = root / cfg.paths.training
    _write_json(
        {
            "history": result.history,
            "best_val": result.best_metrics,
            "global_step": result.global_step,
            "labels": result.labels,
        },
        out / HISTORY_FILE,
    )
    timings = {
        "wall_time_s": result.wall_time_s,
        "train_samples_per_s": result.train_samples_per_s,
        "padding_efficiency": result.padding_efficiency,
        "tokens_processed": result.tokens_processed,
        "global_step": result.global_step,
        "resumed_from_step": result.resumed_from_step,
        "epochs_run": result.epochs_run,
        "world_size": result.world_size,
        "device": result.device,
    }
    _write_json(timings, out / TIMINGS_FILE)
    log.info(
        "trained %s steps (resumed from %s) in %.0f s on %s x%d; best val %s",
        result.global_step,
        result.resumed_from_step,
        result.wall_time_s,
        result.device,
        result.world_size,
        {k: round(v, 4) for k, v in result.best_metrics.items() if isinstance(v, float)},
    )
    return timings


@dataclass(frozen=True)
class EvaluateOutcome:
    metrics: dict[str, Any]
    run_id: str
    model_uri: str


def run_evaluate(cfg: Config, root: Path) -> EvaluateOutcome:
    """Score model + baseline on test, then log the training run to MLflow (one run per training)."""
    from textclf.evaluate.report import evaluate_model_and_baseline
    from textclf.tracking import log_training_run

    model_dir = root / cfg.paths.model
    prepared = root / cfg.paths.prepared
    out_dir = root / cfg.paths.evaluation
    result = evaluate_model_and_baseline(cfg, model_dir, prepared, out_dir)

    training = root / cfg.paths.training
    history = json.loads((training / HISTORY_FILE).read_text(encoding="utf-8"))
    timings_path = training / TIMINGS_FILE
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    splits = load_splits(prepared)
    split_paths = {name: (cfg.paths.prepared / f"{name}.parquet").as_posix() for name in splits}
    test_metrics = {"transformer": result.transformer}
    if result.baseline is not None:
        test_metrics["baseline"] = result.baseline
    summary = {k: v for k, v in timings.items() if isinstance(v, int | float)}
    artifacts = [
        out_dir,
        training,
        root / cfg.paths.reports / "raw",
        root / cfg.paths.reports / "prepared",
        prepared / "manifest.json",
    ]
    logged = log_training_run(
        cfg,
        root,
        model_dir=model_dir,
        splits=splits,
        split_paths=split_paths,
        history=history["history"],
        train_summary=summary,
        test_metrics=test_metrics,
        artifacts=artifacts,
    )
    _log_train_ids(cfg, root, logged.run_id, splits["train"]["id"].tolist())
    _write_json({"run_id": logged.run_id, "model_uri": logged.model_uri}, out_dir / RUN_FILE)
    t, b = result.transformer, result.baseline or {}
    log.info(
        "test accuracy %.4f macro-F1 %.4f (baseline %.4f / %.4f); MLflow run %s",
        t["accuracy"],
        t["macro_f1"],
        b.get("accuracy", float("nan")),
        b.get("macro_f1", float("nan")),
        logged.run_id,
    )
    return EvaluateOutcome(metrics=result.metrics(), run_id=logged.run_id, model_uri=logged.model_uri)


def _log_train_ids(cfg: Config, root: Path, run_id: str, ids: list[str]) -> None:
    """The gate excludes texts a champion trained on from later comparisons: record them."""
    from textclf.gate.evidence import log_train_ids

    log_train_ids(run_id, ids, cfg, root)


def last_run(cfg: Config, root: Path) -> dict[str, str] | None:
    path = root / cfg.paths.evaluation / RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

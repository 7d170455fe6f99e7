"""The DVC stages, one entry point each, all ``run_<stage>(cfg, root)``: wiring of library parts.

``dvc.yaml`` runs them through the CLI (``textclf <stage>``); nothing here holds ML logic. Files each
stage writes are its DVC outputs (see dvc.yaml); ``train`` also opens the training's MLflow run and
records its id in ``<paths.training>/mlflow_run.json``, which ``evaluate`` reads to log into the same run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from textclf.config import Config
from textclf.data.io import read_table
from textclf.data.prepare import read_split
from textclf.errors import ValidationFailed

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
ENV_PROGRESS_ARTIFACT = "TEXTCLF_PROGRESS_ARTIFACT_ID"  # set by the flow for the train stage
SPLITS = ("train", "val", "test")


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def run_validate_raw(cfg: Config, root: Path) -> None:
    """Great Expectations over ``paths.raw``; reports in ``<paths.reports>/raw``; raises on blocking
    failures."""
    from textclf.validation.suites import validate_raw

    frame = read_table(root / cfg.paths.raw, cfg.data.format)
    report = validate_raw(frame, cfg.data, cfg.validation, root / cfg.paths.reports / "raw")
    if not report.success:
        raise ValidationFailed(report.summary_text())


def run_prepare(cfg: Config, root: Path) -> dict[str, Any]:
    """Normalize, drop empties and label conflicts, dedup, split: ``paths.raw`` → ``paths.prepared``."""
    from textclf.data.prepare import run_prepare as prepare

    return prepare(cfg, root)


def run_validate_prepared(cfg: Config, root: Path) -> None:
    """Great Expectations over the three splits; reports in ``<paths.reports>/prepared``."""
    from textclf.validation.suites import validate_prepared

    splits = {s: read_table(root / cfg.paths.prepared / f"{s}.parquet", "parquet") for s in SPLITS}
    report = validate_prepared(splits, cfg.data, cfg.validation, root / cfg.paths.reports / "prepared")
    if not report.success:
        raise ValidationFailed(report.summary_text())


def run_train(cfg: Config, root: Path) -> dict[str, Any] | None:
    """Train on train, select on val, log it all to one MLflow run. Every torchrun rank calls this;
    rank 0 alone logs and writes. Returns the run record on rank 0."""
    from textclf.train.data import training_fingerprint
    from textclf.train.trainer import RUN_ID_FILE, effective_config, prepare_checkpoint_dir, train_model

    cfg = effective_config(cfg)  # what is logged is what trains (GPU profile applied)
    splits = {s: read_split(root / cfg.paths.prepared, s) for s in ("train", "val")}
    ckpt, model_dir, out = root / cfg.paths.checkpoints, root / cfg.paths.model, root / cfg.paths.training
    base_models = root / cfg.paths.base_models
    if os.environ.get("RANK", "0") != "0":  # a DDP worker: train, log nothing
        train_model(cfg, splits["train"], splits["val"], model_dir, ckpt, base_models=base_models)
        return None
    import mlflow

    from textclf.tracking.run import base_model_tags, log_model, step_metrics, training_run

    kept = prepare_checkpoint_dir(ckpt, training_fingerprint(cfg, splits["train"], splits["val"]))
    run_id = (ckpt / RUN_ID_FILE).read_text().strip() if kept and (ckpt / RUN_ID_FILE).is_file() else None
    callbacks = [step_metrics()]
    if progress := os.environ.get(ENV_PROGRESS_ARTIFACT):  # under the flow: a progress bar in Prefect's UI
        callbacks.append(training_progress(progress))
    with training_run(cfg, root, run_id, splits) as run_id:
        (ckpt / RUN_ID_FILE).write_text(run_id)
        result = train_model(
            cfg, splits["train"], splits["val"], model_dir, ckpt, callbacks=callbacks, base_models=base_models
        )
        timings = {
            "wall_time_s": result.wall_time_s,
            "train_samples_per_s": result.train_samples_per_s,
            "padding_efficiency": result.padding_efficiency,
            "global_step": result.global_step,
            "resumed_from_step": result.resumed_from_step,
            "world_size": result.world_size,
        }
        mlflow.log_metrics({k: float(v) for k, v in timings.items()})
        mlflow.set_tag("textclf.device", result.device)
        mlflow.set_tags(base_model_tags(model_dir))
        model_uri = log_model(
            model_dir, splits["train"]["id"].tolist(), splits["train"]["text"].head(3).tolist()
        )
    _write_json(
        {"history": result.history, "best_val": result.best, "labels": result.labels}, out / "history.json"
    )
    _write_json({**timings, "device": result.device}, out / "timings.json")
    record = {"run_id": run_id, "model_uri": model_uri}
    _write_json(record, out / RUN_FILE)
    log.info(
        "trained %d steps (resumed from %d) in %.0f s; best val %s; MLflow run %s",
        result.global_step,
        result.resumed_from_step,
        result.wall_time_s,
        result.best,
        run_id,
    )
    return record


def training_progress(artifact_id: str) -> Any:
    """A TrainerCallback that moves a Prefect progress artifact with the optimizer steps."""
    from prefect.artifacts import update_progress_artifact
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            every = max(state.max_steps // 50, 1)
            if state.is_world_process_zero and (
                state.global_step % every == 0 or state.global_step == state.max_steps
            ):
                update_progress_artifact(artifact_id, progress=100.0 * state.global_step / state.max_steps)

    return Progress()


def run_evaluate(cfg: Config, root: Path) -> dict[str, Any]:
    """Score the model and the baseline on test (the only reader of it), in the training's MLflow run."""
    from textclf.evaluate.report import evaluate_model_and_baseline
    from textclf.tracking.run import log_evaluation, reopened_run

    run = json.loads((root / cfg.paths.training / RUN_FILE).read_text(encoding="utf-8"))
    with reopened_run(cfg, root, run["run_id"]):
        result = evaluate_model_and_baseline(
            cfg, root / cfg.paths.model, root / cfg.paths.prepared, root / cfg.paths.evaluation
        )
        metrics = {"transformer": result.transformer} | (
            {"baseline": result.baseline} if result.baseline else {}
        )
        metrics |= {f"variant_{name}": row for name, row in result.variants.items() if name != "torch"}
        log_evaluation(cfg, root, read_split(root / cfg.paths.prepared, "test"), metrics, run["model_uri"])
    log.info("logged the evaluation to MLflow run %s", run["run_id"])
    return {"run_id": run["run_id"], **result.metrics()}

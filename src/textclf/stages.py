"""The DVC stages, one entry point each, all ``run_<stage>(cfg, root)``: wiring of library parts.

``dvc.yaml`` runs them through the CLI (``textclf <stage>``); nothing here holds ML logic. Files each
stage writes are its DVC outputs (see dvc.yaml); ``train`` also opens the training's MLflow run and
records its id in ``<paths.training>/mlflow_run.json``, which ``evaluate`` reads to log into the same run.

Each ``run_<stage>`` imports what it uses inside its body: a stage's DVC deps (dvc.yaml) are the modules
it imports, so an edit to training code re-runs train and evaluate, not the validations
(tests/test_dvc_pipeline.py checks the deps cover the imports).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from textclf import contracts as C
from textclf.config import Config
from textclf.data.io import read_table
from textclf.errors import ModelSourceError, ValidationFailed

log = logging.getLogger(__name__)


def run_validate_raw(cfg: Config, root: Path) -> None:
    """Great Expectations over ``paths.raw``; reports in ``<paths.reports>/raw``; raises on blocking
    failures."""
    from textclf.validation.suites import validate_raw

    frame = read_table(root / cfg.paths.raw, cfg.data.format, cfg.data.encoding)
    report = validate_raw(frame, cfg.data, cfg.validation, root / cfg.paths.reports / "raw")
    if not report.success:
        raise ValidationFailed(report.summary_text())


def run_prepare(cfg: Config, root: Path) -> dict[str, Any]:
    """Normalize, drop empties and label conflicts, dedup, split: ``paths.raw`` (and ``paths.feedback``
    when present, train only) → ``paths.prepared``."""
    from textclf.data.prepare import prepare, write_prepared

    raw, feedback = root / cfg.paths.raw, root / cfg.paths.feedback
    extra = read_table(feedback, "csv") if feedback.is_file() else None
    prepared = prepare(read_table(raw, cfg.data.format, cfg.data.encoding), cfg.data, cfg.prepare, extra)
    manifest = write_prepared(prepared, root / cfg.paths.prepared, cfg.paths.raw, raw)
    log.info(
        "prepared %d rows → %s (dropped: %s)",
        manifest["rows_out"],
        {k: v["rows"] for k, v in manifest["splits"].items()},
        manifest["dropped"],
    )
    return manifest


def run_validate_prepared(cfg: Config, root: Path) -> None:
    """Great Expectations over the three splits; reports in ``<paths.reports>/prepared``."""
    from textclf.validation.suites import validate_prepared

    splits = {s: read_table(root / cfg.paths.prepared / C.split_file(s), "parquet") for s in C.SPLITS}
    report = validate_prepared(splits, cfg.data, cfg.validation, root / cfg.paths.reports / "prepared")
    if not report.success:
        raise ValidationFailed(report.summary_text())


def run_train(cfg: Config, root: Path) -> dict[str, Any] | None:
    """Train on train, select on val, log it all to one MLflow run. Every torchrun rank calls this;
    rank 0 alone logs and writes. Returns the run record on rank 0."""
    from textclf.data.prepare import read_split
    from textclf.tracking.run import log_model, step_metrics, training_run
    from textclf.train.blend import fit_blend, fit_ngram
    from textclf.train.data import training_fingerprint
    from textclf.train.trainer import effective_config, prepare_checkpoint_dir, train_model

    cfg = effective_config(cfg)  # what is logged is what trains (GPU profile applied)
    splits = {s: read_split(root / cfg.paths.prepared, s) for s in ("train", "val")}
    ckpt, model_dir, out = root / cfg.paths.checkpoints, root / cfg.paths.model, root / cfg.paths.training
    base_models = root / cfg.paths.base_models
    if os.environ.get("RANK", "0") != "0":  # a DDP worker: train, log nothing
        train_model(cfg, splits["train"], splits["val"], model_dir, ckpt, base_models=base_models)
        return None
    import mlflow

    from textclf.tracking.run import base_model_tags

    kept = prepare_checkpoint_dir(ckpt, training_fingerprint(cfg, splits["train"], splits["val"]))
    run_id = (ckpt / C.RUN_ID_FILE).read_text().strip() if kept and (ckpt / C.RUN_ID_FILE).is_file() else None
    callbacks = [step_metrics()]
    if progress := os.environ.get(C.ENV_PROGRESS_ARTIFACT):  # under the flow: a progress bar in Prefect's UI
        callbacks.append(training_progress(progress))
    with training_run(cfg, root, run_id, splits) as run_id:
        (ckpt / C.RUN_ID_FILE).write_text(run_id)
        if cfg.model.family == "ngram":
            train, val = splits["train"], splits["val"]
            result = fit_ngram(
                cfg.evaluate.baseline, cfg.prepare.normalize, cfg.data.labels, model_dir, train, val
            )
        else:
            result = train_model(
                cfg,
                splits["train"],
                splits["val"],
                model_dir,
                ckpt,
                callbacks=callbacks,
                base_models=base_models,
            )
        timings = {
            "wall_time_s": result.wall_time_s,
            "train_samples_per_s": result.train_samples_per_s,
            "padding_efficiency": result.padding_efficiency,
            "global_step": result.global_step,
            "resumed_from_step": result.resumed_from_step,
            "world_size": result.world_size,
        }
        if cfg.model.family == "blend":
            weights, batch = cfg.model.blend_weights, cfg.train.eval_batch_size
            timings |= fit_blend(
                cfg.evaluate.baseline, weights, batch, model_dir, splits["train"], splits["val"]
            )
        mlflow.log_metrics({k: float(v) for k, v in timings.items()})
        mlflow.set_tag("textclf.device", result.device)
        mlflow.set_tags(base_model_tags(model_dir))
        model_uri = log_model(
            model_dir,
            splits["train"]["id"].tolist(),
            splits["train"]["text"].head(3).tolist(),
            cfg.train.eval_batch_size,
        )
    C.write_json(
        {"history": result.history, "best_val": result.best, "labels": result.labels}, out / "history.json"
    )
    C.write_json({**timings, "device": result.device}, out / "timings.json")
    record = {"run_id": run_id, "model_uri": model_uri}
    C.write_json(record, out / C.RUN_FILE)
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
    from textclf.data.prepare import read_split
    from textclf.evaluate.report import evaluate_model_and_baseline
    from textclf.tracking.run import log_evaluation, reopened_run

    run = C.read_run_record(root / cfg.paths.training)
    if run is None:
        raise ModelSourceError(f"no {C.RUN_FILE} in {cfg.paths.training}: run the train stage first")
    with reopened_run(cfg, root, run["run_id"]):
        result = evaluate_model_and_baseline(
            cfg.evaluate,
            cfg.train.eval_batch_size,
            root / cfg.paths.model,
            root / cfg.paths.prepared,
            root / cfg.paths.evaluation,
        )
        metrics = {"transformer": result.transformer} | (
            {"baseline": result.baseline} if result.baseline else {}
        )
        metrics |= {f"variant_{name}": row for name, row in result.variants.items() if name != "torch"}
        log_evaluation(
            cfg.paths, root, read_split(root / cfg.paths.prepared, "test"), metrics, run["model_uri"]
        )
    log.info("logged the evaluation to MLflow run %s", run["run_id"])
    return {"run_id": run["run_id"], **result.metrics()}

"""Prefect flow: the pipeline as retriable tasks over the textclf library.

validate_raw → prepare → validate_prepared → train → evaluate are DVC stages (names read from dvc.yaml),
each reproduced as one task, so dvc.lock stays the source of truth and a finished stage is a no-op on
a retry. gate and package change registry and Bento state, which DVC must not own. A killed training is
retried and resumes from its checkpoint; failures the same inputs would repeat are not retried.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run, task_run
from prefect.states import Completed

from textclf import repro, runs
from textclf.config import Config, load_config
from textclf.contracts import ENV_PARAMS, ENV_PROGRESS_ARTIFACT
from textclf.env import ENV_FLOW_RUN_ID, ENV_TASK_RUN_ID, configure_environment
from textclf.gate.promotion import run_gate
from textclf.serving.release import package_version
from textclf.tracking.store import tracking_uri


def _retry_unless_deterministic(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except repro.NotRetriable:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


def _task(fn: Any, name: str, cfg: Config) -> Any:
    policy = cfg.flow.policy(name)
    return task(
        fn,
        name=name,
        retries=policy.retries,
        retry_delay_seconds=policy.delays() or 0,
        timeout_seconds=policy.timeout_seconds,
        retry_condition_fn=_retry_unless_deterministic,
        cache_policy=NO_CACHE,  # DVC decides what is up to date
    )


def stage(root: Path, name: str, cfg: Config, force: bool) -> bool:
    with get_client(sync_client=True) as client:  # the stage process logs to this task run
        env = {
            "PREFECT_API_URL": str(client.api_url),
            ENV_FLOW_RUN_ID: str(flow_run.id),
            ENV_TASK_RUN_ID: str(task_run.id),
        }
    if name == "train":
        env[ENV_PROGRESS_ARTIFACT] = str(
            create_progress_artifact(0.0, key="training-progress", description="optimizer steps done")
        )
    try:
        return repro.reproduce(root, name, force=force, env=env)
    except repro.NotRetriable as err:
        raise repro.NotRetriable(runs.validation_failure(cfg, root, name) or str(err)) from None


def experiment(root: Path, overrides: list[str], cfg: Config) -> str:
    repro.run_experiment(
        root, overrides, f"run-{str(flow_run.id)[:8]}", {"MLFLOW_TRACKING_URI": tracking_uri(cfg, root)}
    )
    return runs.run_of_flow_run(cfg, root, str(flow_run.id))


def gate_candidate(cfg: Config, root: Path, run_id: str) -> dict[str, Any]:
    outcome = run_gate(cfg, root, run_id=run_id)
    return {
        "bento": outcome.bento,
        "promoted": outcome.promoted,
        "version": outcome.version,
        "message": outcome.message,
        "markdown": outcome.decision.to_markdown(),
    }


def package_champion(cfg: Config, root: Path) -> str:
    return package_version(cfg, root).bento_tag


def notify(flow: Any, flow_run: Any, state: Any) -> None:  # Prefect passes these by keyword
    root = Path(flow_run.parameters.get("project_dir") or Path.cwd())
    cfg = load_config(root / flow_run.parameters.get("params", "params.yaml"))
    runs.notify_failure(
        cfg.flow.notification_block,
        f"textclf flow run {flow_run.name} ({flow_run.id}) ended {state.type.value}: {state.message}",
    )


def _publish_artifacts(result: runs.RunResult, cfg: Config, root: Path) -> None:
    """The run's artifacts in Prefect: the report, links to the MLflow run and the Data Docs, metrics."""
    create_markdown_artifact(
        key="textclf-run-report", markdown=runs.report_markdown(result, cfg, root), description="textclf run"
    )
    if result.run_id:
        for key, link in runs.run_links(cfg, root, result.run_id).items():
            create_link_artifact(link, key=key, link_text=link, description=key.replace("-", " "))
        create_table_artifact(
            runs.metrics_table(cfg, root, result.run_id),
            key="test-metrics",
            description="test accuracy and macro-F1: candidate, champion, baseline",
        )


@flow(name="training_pipeline", on_failure=[notify], on_crashed=[notify], log_prints=True)
def training_pipeline(
    set_params: list[str] | None = None,
    force: bool = False,
    project_dir: str | None = None,
    import_feedback: bool = False,
    reason: str | None = None,
    params: str = "params.yaml",
) -> runs.RunResult:
    """Validate → prepare → train → evaluate → gate → package, doing only what changed.

    ``set_params`` (``["train.learning_rate=1e-4", ...]``) runs the pipeline as a DVC experiment with those
    overrides, leaving params.yaml untouched; ``force`` re-runs every stage; ``import_feedback`` first
    merges the users' feedback into a new data version; ``reason`` (e.g. the monitor's drift) is reported;
    ``params`` is the config file, relative to the project (the stage commands read it too).
    """
    logger = get_run_logger()
    root = Path(project_dir or Path.cwd()).resolve()
    configure_environment(root)
    if flow_run.id:
        os.environ[ENV_FLOW_RUN_ID] = str(flow_run.id)  # stage processes tag their MLflow run with it
    cfg = load_config(root / params)
    os.environ[ENV_PARAMS] = params  # the stage commands DVC starts read the same file
    if reason:
        logger.info("triggered by %s", reason)
    remote = repro.remote(root)
    if remote:  # a worker's fresh clone: the data and the outputs someone already pushed
        # (first: the feedback is merged into the pulled data, never into an empty folder)
        logger.info("dvc pull from %s: %d files", remote, _task(repro.pull, "dvc pull", cfg)(root))
    if import_feedback:
        from textclf.data.feedback import import_feedback as merge

        logger.info(
            "%d feedback rows merged into the data", _task(merge, "import feedback", cfg)(cfg, root, True)
        )
    result = runs.RunResult("no change", runs.NO_CHANGE)
    result.reason = reason
    if set_params:
        _task(repro.produce, "prepare current split", cfg)(root, cfg.paths.prepared)
        result.run_id = _task(experiment, "experiment", cfg)(root, set_params, cfg)
    elif not force and (judged_run := runs.up_to_date(cfg, root)):
        result.run_id = judged_run
    else:
        result.stages = {
            name: _task(stage, name, cfg)(root, name, cfg, force) for name in repro.stage_names(root)
        }
        if remote:
            logger.info("dvc push: %d files", _task(repro.push, "dvc push", cfg)(root))
        result.run_id = runs.current_run(cfg, root)["run_id"]  # type: ignore[index]
    if set_params or result.stages:
        result.gate = _task(gate_candidate, "gate", cfg)(cfg, root, result.run_id)
        result.bento = result.gate["bento"] if result.gate["promoted"] else None
        if result.gate["promoted"] and result.bento is None:  # infra validation off: package after promotion
            result.bento = _task(package_champion, "package", cfg)(cfg, root)
        result.status = "promoted" if result.gate["promoted"] else "rejected"
        result.message = result.gate["message"] + (
            f"; bento {result.bento}" if result.bento else "; champion unchanged"
        )
    _publish_artifacts(result, cfg, root)
    logger.info(result.message)
    return Completed(message=result.message, data=result)  # type: ignore[return-value]

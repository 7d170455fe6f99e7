"""What the Prefect flow asks of the project, through DVC's Python API: which stages there are (from
dvc.yaml), which changed (``Repo.status``), reproducing one, running a parameter override as a DVC
experiment, and the run report. DVC is the one change detector: a stage runs when its deps, params or
outputs changed, and the flow has nothing to do when none did and the current run was already judged.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from textclf import contracts as C
from textclf.config import Config
from textclf.errors import TextclfError
from textclf.tracking import registry as R
from textclf.tracking.lineage import TAG_PREFECT_FLOW_RUN_ID
from textclf.tracking.registry import GATE_DECISION
from textclf.tracking.store import client, tracking_uri


class NotRetriable(TextclfError):
    """A failure the same inputs will reproduce (bad data, a bad config, a missing output): no retry."""


def stage_names(root: Path) -> list[str]:
    """The pipeline's stages in dvc.yaml order (which is their dependency order)."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


@contextmanager
def _repo(root: Path) -> Iterator[Any]:
    """DVC's Repo, from inside the project: DVC resolves stage names and reports paths against the
    current directory."""
    from dvc.repo import Repo

    with chdir(root), Repo(str(root)) as repo:
        yield repo


def changed(root: Path) -> list[str]:
    """Stages (and ``.dvc`` files) whose deps, params or outputs differ from dvc.lock."""
    with _repo(root) as repo:
        return sorted(repo.status())


def remote(root: Path) -> str | None:
    """The project's default DVC remote (``dvc remote add -d``), if it has one."""
    with _repo(root) as repo:
        return repo.config["core"].get("remote")


def pull(root: Path) -> int:
    """``dvc pull --allow-missing``: the data and whatever stage outputs the remote holds (a worker's
    fresh clone then reproduces only what nobody pushed). Returns the number of files fetched."""
    with _repo(root) as repo:
        return int(repo.pull(allow_missing=True)["stats"].get("fetched", 0))


def push(root: Path) -> int:
    """``dvc push``: the data and every stage output to the default remote; returns files pushed."""
    with _repo(root) as repo:
        return int(repo.push())


def _stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Stage commands are `textclf ...`: this environment's bin first on PATH.
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {})}


def _failure(err: Exception) -> tuple[str, bool]:
    """(message, retriable) of a failed reproduction. Only a stage command that crashed or was killed
    is worth a retry: textclf's own exit codes (3-6) say the inputs are at fault, and DVC's errors
    (a declared output missing, a bad dvc.yaml) repeat on every attempt."""
    from dvc.stage.exceptions import StageCmdFailedError

    cause = err.__cause__ or err
    if isinstance(cause, StageCmdFailedError):
        code = re.search(r"exited with (-?\d+)", str(cause))  # DVC keeps the status only in its message
        return f"{err}: {cause}", not (code and 3 <= int(code.group(1)) <= 6)
    return f"{err}: {cause}", False


def reproduce(
    root: Path, stage: str, force: bool = False, env: dict[str, str] | None = None, upstream: bool = False
) -> bool:
    """``dvc repro --single-item <stage>`` (``upstream``: ``dvc repro <stage>``); True when a stage ran.
    ``env`` is added to the stage command's environment."""
    from dvc.exceptions import DvcException

    try:
        with _repo(root) as repo:
            return bool(repo.reproduce(stage, single_item=not upstream, force=force, run_env=_stage_env(env)))
    except DvcException as err:
        message, retriable = _failure(err)
        if retriable:
            raise RuntimeError(message) from err
        raise NotRetriable(message) from err


def produce(root: Path, path: Path) -> None:
    """Reproduce the stage that outputs ``path``, with its upstream: e.g. the workspace's prepared splits,
    which the gate judges every candidate on, before an experiment that runs in a copy."""
    with _repo(root) as repo:
        target = (root / path).resolve()
        stage = next(s for s in repo.index.stages for o in s.outs if Path(o.fs_path).resolve() == target)
    reproduce(root, stage.name, upstream=True)


def run_experiment(root: Path, overrides: list[str], name: str, env: dict[str, str]) -> None:
    """``dvc exp run --temp -S ...``: the whole pipeline with overridden params in a temporary copy of
    the workspace; params.yaml, dvc.lock and the workspace outputs stay as they were. ``env`` reaches
    the stage commands (e.g. the project's MLflow store: the copy must not log into a store of its own)."""
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    env = {**_stage_env(), **env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # DVC starts the experiment's stage commands with this process's environment
    try:
        with _repo(root) as repo:
            repo.experiments.run(params=overrides, tmp_dir=True, name=name)
    except (DvcException, SCMError) as err:  # e.g. no git identity for the experiment's commit
        message, retriable = _failure(err)
        raise (RuntimeError if retriable else NotRetriable)(message) from err
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def current_run(cfg: Config, root: Path) -> dict[str, str] | None:
    """The MLflow run of the workspace's training (written by the train stage)."""
    path = root / cfg.paths.training / C.RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def validation_failure(cfg: Config, root: Path, stage: str) -> str | None:
    """The failed blocking checks of a validation stage, from its summary, or None."""
    target = {"validate_raw": "raw", "validate_prepared": "prepared"}.get(stage)
    path = root / cfg.paths.reports / str(target) / C.SUMMARY_FILE
    if target is None or not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    failed = [
        f"{c['name']} (observed {c.get('observed')})"
        for c in summary.get("checks", [])
        if not c.get("success") and c.get("severity") == "error"
    ]
    docs = root / cfg.paths.reports / target / C.DATA_DOCS_DIR / "index.html"
    return f"{stage} failed: {', '.join(failed)}; report: {docs}" if failed else None


def judged(cfg: Config, root: Path, run_id: str) -> bool:
    """Whether the gate already decided on this run (it tags the run with the decision id)."""

    return GATE_DECISION in client(cfg, root).get_run(run_id).data.tags


def run_of_flow_run(cfg: Config, root: Path, flow_run_id: str) -> str:
    """The MLflow run a flow run's training logged (its processes tag it with the flow run id)."""

    c = client(cfg, root)
    experiment = c.get_experiment_by_name(cfg.mlflow.experiment)
    runs = c.search_runs(
        [experiment.experiment_id] if experiment else [],
        f"tags.`{TAG_PREFECT_FLOW_RUN_ID}` = '{flow_run_id}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise NotRetriable(f"no MLflow run was logged by flow run {flow_run_id}")
    return str(runs[0].info.run_id)


def notify_failure(url: str | None, message: str) -> None:
    """Always logged; also sent through Prefect's webhook notification block when flow.webhook_url is set."""
    import logging

    logging.getLogger("textclf.flow").error(message)
    if url:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        block = CustomWebhookNotificationBlock(name="textclf", url=url, json_data={"text": "{{body}}"})
        block.notify(body=message, subject="textclf flow run failed")


def run_links(cfg: Config, root: Path, run_id: str) -> dict[str, str]:
    """Where a person looks next: the MLflow run (its UI page when a server is configured, else the
    store) and the Data Docs of both validations."""

    uri = tracking_uri(cfg, root)
    experiment = client(cfg, root).get_run(run_id).info.experiment_id
    mlflow_link = (
        f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}" if uri.startswith("http") else uri
    )
    docs = {
        t: (root / cfg.paths.reports / t / C.DATA_DOCS_DIR / "index.html").as_uri()
        for t in ("raw", "prepared")
    }
    return {"mlflow-run": mlflow_link, "data-docs-raw": docs["raw"], "data-docs-prepared": docs["prepared"]}


def metrics_table(cfg: Config, root: Path, run_id: str) -> list[dict[str, Any]]:
    """Test metrics of the candidate, the champion (as its own run logged them) and the baseline."""

    c = client(cfg, root)
    rows = []
    champion = R.alias(c, cfg.mlflow.registered_model, R.CHAMPION)
    champion_run = c.get_model_version(cfg.mlflow.registered_model, champion).run_id if champion else None
    for name, rid, prefix in (
        ("candidate", run_id, C.TEST_PREFIX),
        ("champion", champion_run, C.TEST_PREFIX),
        ("baseline", run_id, C.BASELINE_TEST_PREFIX),
    ):
        if rid:
            m = c.get_run(rid).data.metrics
            rows.append(
                {
                    "model": name,
                    "run": rid[:12],
                    **{k: round(m.get(prefix + k, float("nan")), 4) for k in ("accuracy", "macro_f1")},
                }
            )
    return rows


@dataclass
class RunResult:
    status: str  # "no change" | "promoted" | "rejected"
    message: str
    stages: dict[str, bool] = field(default_factory=dict)  # stage -> ran
    run_id: str | None = None
    gate: dict[str, Any] | None = None
    bento: str | None = None
    reason: str | None = None  # why the run was started, when something else than the schedule did


def report_markdown(result: RunResult, cfg: Config, root: Path) -> str:
    """The run's Prefect artifact: validation, model vs baseline, the gate's decision, the Bento."""
    lines = [f"# textclf run: {result.status}", "", result.message, ""]
    if result.reason:
        lines += [f"Triggered by {result.reason}.", ""]
    for target in ("raw", "prepared"):
        path = root / cfg.paths.reports / target / C.SUMMARY_FILE
        if path.is_file():
            s = json.loads(path.read_text(encoding="utf-8"))
            passed = sum(1 for c in s.get("checks", []) if c.get("success"))
            lines.append(
                f"- validation ({target}): {'passed' if s.get('success') else 'FAILED'}, "
                f"{passed}/{len(s.get('checks', []))} checks"
            )
    metrics = root / cfg.paths.evaluation / C.METRICS_FILE
    if metrics.is_file():
        m = json.loads(metrics.read_text(encoding="utf-8"))
        lines += ["", "| model | accuracy | macro-F1 |", "|---|---|---|"]
        lines += [
            f"| {k} | {m[k]['accuracy']:.4f} | {m[k]['macro_f1']:.4f} |"
            for k in ("transformer", "baseline")
            if k in m
        ]
    if result.gate:
        lines += ["", result.gate["markdown"]]
    if result.bento:
        lines += ["", f"Bento `{result.bento}`: serve it with `textclf serve`"]
    if result.run_id:
        lines += ["", f"MLflow run `{result.run_id}`"]
    if result.stages:
        lines += [
            "",
            "| stage | ran |",
            "|---|---|",
            *(f"| {s} | {ran} |" for s, ran in result.stages.items()),
        ]
    return "\n".join(lines) + "\n"

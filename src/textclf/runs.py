"""A pipeline run as people see it: the MLflow run the workspace's training logged, whether the gate
judged it, what failed validation, the report and links the flow publishes, and the failure notice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textclf import contracts as C
from textclf.config import Config
from textclf.repro import NotRetriable, status_in_background
from textclf.tracking import registry as R
from textclf.tracking.lineage import TAG_PREFECT_FLOW_RUN_ID
from textclf.tracking.store import client, redact, tracking_uri

log = logging.getLogger("textclf.flow")


@dataclass
class RunResult:
    status: str  # "no change" | "promoted" | "rejected"
    message: str
    stages: dict[str, bool] = field(default_factory=dict)  # stage -> ran
    run_id: str | None = None
    gate: dict[str, Any] | None = None
    bento: str | None = None
    reason: str | None = None  # why the run was started, when something else than the schedule did


NO_CHANGE = "DVC reports every stage up to date and the run was judged"


def current_run(cfg: Config, root: Path) -> dict[str, str] | None:
    """The MLflow run of the workspace's training (written by the train stage)."""
    return C.read_run_record(root / cfg.paths.training)


def up_to_date(cfg: Config, root: Path) -> str | None:
    """The workspace's run when there is nothing to do (every DVC stage up to date and the gate decided
    on that run), else None. Cheap: the CLI asks it before importing Prefect."""
    status = status_in_background(root)
    try:
        run = current_run(cfg, root)
        decided = run is not None and judged(cfg, root, run["run_id"])
    finally:
        clean = status.wait() == 0
    return run["run_id"] if clean and decided else None  # type: ignore[index]


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
    """Whether the gate already decided on this run (it tags the run with the decision id) and finished
    what it decided: a champion of this run still marked pending sends the flow through the gate again,
    which completes the promotion (and the flow packages it)."""

    c, model = client(cfg, root), cfg.mlflow.registered_model
    if R.GATE_DECISION not in c.get_run(run_id).data.tags:
        return False
    champion = R.alias(c, model, R.CHAMPION)
    if champion is None:
        return True
    mv = c.get_model_version(model, champion)
    return not (mv.run_id == run_id and R.PENDING in (mv.tags or {}))


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


def notify_failure(block: str | None, message: str) -> None:
    """Always logged; also sent through the Prefect notification block ``block`` ("<type>/<name>",
    flow.notification_block) when one is named. A block missing on the server is a warning: the run's
    failure is what the hook reports, not the notifier's."""
    log.error(message)
    if not block:
        return
    from prefect.blocks.core import Block
    from prefect.blocks.notifications import NotificationBlock

    try:
        notifier = Block.load(block)  # the saved block's own class: webhook, Slack, Teams, email, ...
    except ValueError as err:
        log.warning("flow.notification_block %r: %s; the failure was only logged", block, err)
        return
    if isinstance(notifier, NotificationBlock):
        notifier.notify(body=message, subject="textclf flow run failed")
    else:
        log.warning("flow.notification_block %r is not a notification block", block)


def run_links(cfg: Config, root: Path, run_id: str) -> dict[str, str]:
    """Where a person looks next: the MLflow run (its UI page when a server is configured, else the
    store) and the Data Docs of both validations."""

    uri = redact(tracking_uri(cfg, root))  # a link is published: never with credentials in it
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

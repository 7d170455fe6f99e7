"""Prefect flow: watch what the champion serves and retrain when the data moves.

Runs ``textclf monitor`` over the traffic the service recorded; when a measure passes its threshold,
it starts the training deployment (``monitor.training_deployment``) with the reason and asks it to
merge the users' feedback first, so the next version of the data includes what the drift is about.
The training runs in the deployment's own checkout: a ``serve()`` deployment carries its
``project_dir`` among its parameters, a pool deployment runs in the clone its worker makes; this flow's
folder is never passed (on a worker it does not exist, or is somebody else's working tree).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment

from textclf.config import load_config
from textclf.drift import monitor
from textclf.env import configure_environment


@flow(name="monitor", log_prints=True)
def monitor_flow(
    project_dir: str | None = None, since_minutes: float | None = None, params: str = "params.yaml"
) -> dict[str, Any]:
    """Measure drift since ``since_minutes`` ago (default: all recorded traffic); on drift, train."""
    root = Path(project_dir or Path.cwd()).resolve()
    configure_environment(root)
    cfg = load_config(root / params)
    since = (datetime.now(UTC) - timedelta(minutes=since_minutes)).isoformat() if since_minutes else None
    report = monitor(cfg, root, since)
    create_markdown_artifact(report.markdown(), key="drift-report", description=report.summary)
    triggered = None
    if report.drifted:
        run = run_deployment(
            cfg.monitor.training_deployment,
            parameters={  # merged over the deployment's own parameters: no project_dir of ours
                "reason": f"drift: {report.summary}",
                "import_feedback": True,
                "params": params,
            },
            timeout=0,  # start it; the training runs on its own
        )
        triggered = str(run.id)
        get_run_logger().warning(
            "%s; started %s (flow run %s)", report.summary, cfg.monitor.training_deployment, run.id
        )
    return {"summary": report.summary, "drifted": report.drifted, "training_flow_run": triggered}

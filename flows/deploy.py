"""The deployments: nightly training and hourly monitoring.

    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/deploy.py

serves ``training_pipeline`` as deployment ``flow.deployment`` with the cron schedule and timezone from
params.yaml and a concurrency limit of 1 (runs never overlap), and ``monitor`` as ``monitor.deployment``
every ``monitor.interval_minutes`` (drift starts the training deployment). The process stays up and runs
each scheduled flow run. ``--interval N`` replaces the training's cron schedule (smoke tests).

    python flows/deploy.py --pool textclf [--source GIT_URL]

deploys the training and the monitoring to a work pool instead and returns: a worker clones ``--source``
(default: this checkout's ``origin``) for every run, so it needs no checkout of its own.
``--monitoring-dir`` is the folder the service records traffic and feedback in, as the workers see it
(a shared volume): the monitor reads it, drift-triggered training imports its feedback. It also creates
the automation that puts a run whose heartbeats stopped (its worker died) back in the queue: another
worker, or the same one restarted, runs it again.

A private origin's token never goes into the deployment: ``--git-credentials-block NAME`` (default
``textclf-git-token``) names a Prefect Secret block, and a token given in ``TEXTCLF_GIT_TOKEN`` or in the
origin URL (``https://user:TOKEN@host/...`` or ``https://TOKEN@host/...``) is saved into it first. The
deployment's pull step holds the URL without user info and ``{{ prefect.blocks.secret.NAME }}``, which the
worker resolves when it clones. A configured ``flow.notification_block`` must exist on the server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from prefect import Flow, serve
from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect.flows import load_flow_from_entrypoint
from prefect.runner.storage import GitRepository
from prefect.schedules import Cron, Interval

from textclf.config import load_config
from textclf.contracts import ENV_MONITORING_DIR
from textclf.env import configure_environment
from textclf.tracking.store import redact

HERE = Path(__file__).resolve().parent
ENV_GIT_TOKEN = "TEXTCLF_GIT_TOKEN"
GIT_CREDENTIALS_BLOCK = "textclf-git-token"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project-dir", default=str(HERE.parent), help="project the scheduled runs work on")
    parser.add_argument("--params", default="params.yaml", help="config file, relative to the project")
    parser.add_argument("--interval", type=float, help="seconds between runs instead of the cron schedule")
    parser.add_argument("--pool", help="deploy the training to this work pool instead of serving here")
    parser.add_argument("--source", help="git URL workers clone (default: the checkout's origin)")
    parser.add_argument("--monitoring-dir", help="with --pool: the service's records folder on the workers")
    parser.add_argument(
        "--git-credentials-block",
        help=f"Secret block with the token workers clone with (default {GIT_CREDENTIALS_BLOCK} when a token "
        f"is given in {ENV_GIT_TOKEN} or the source URL)",
    )
    parser.add_argument(
        "--lost-after", type=int, default=90, help="seconds without a heartbeat before a run is retried"
    )
    args = parser.parse_args(argv)
    project = Path(args.project_dir).resolve()
    configure_environment(project)
    cfg = load_config(project / args.params)
    if cfg.flow.notification_block:
        Block.load(cfg.flow.notification_block)  # a missing block fails here, not at the first failed run
    schedule = (
        Interval(args.interval, timezone=cfg.flow.timezone)
        if args.interval
        else Cron(cfg.flow.cron, timezone=cfg.flow.timezone)
    )
    training_kw = dict(
        name=cfg.flow.deployment,
        schedules=[schedule],
        concurrency_limit=1,  # a run waits while another is running
        description="textclf: validate → prepare → train → evaluate → gate → package",
    )
    monitoring_kw = dict(
        name=cfg.monitor.deployment,
        interval=cfg.monitor.interval_minutes * 60,
        description="textclf: recorded traffic vs the champion's training data; drift starts training",
    )
    monitor_params = {"since_minutes": cfg.monitor.interval_minutes, "params": args.params}
    if args.pool:
        # as configured: this machine's url.*.insteadOf rewrites are not the workers'
        origin = ["git", "-C", str(project), "config", "--get", "remote.origin.url"]
        source = args.source or subprocess.check_output(origin, text=True).strip()
        records = {"env": {ENV_MONITORING_DIR: args.monitoring_dir}} if args.monitoring_dir else {}
        storage = git_source(source, args.git_credentials_block, os.environ.get(ENV_GIT_TOKEN))
        for entrypoint, parameters, kw in (
            ("flows/pipeline.py:training_pipeline", {"params": args.params}, training_kw),
            ("flows/monitor.py:monitor_flow", monitor_params, monitoring_kw),
        ):
            Flow.from_source(storage, entrypoint=entrypoint).deploy(  # type: ignore[attr-defined]
                work_pool_name=args.pool,
                build=False,
                push=False,
                parameters=parameters,
                job_variables=records,
                **kw,
            )
        reschedule_lost_runs(args.lost_after)
        return
    training = load_flow_from_entrypoint(f"{HERE / 'pipeline.py'}:training_pipeline")
    monitoring = load_flow_from_entrypoint(f"{HERE / 'monitor.py'}:monitor_flow")
    serve(
        training.to_deployment(
            parameters={"project_dir": str(project), "params": args.params}, **training_kw
        ),
        monitoring.to_deployment(parameters={"project_dir": str(project), **monitor_params}, **monitoring_kw),
    )


def git_source(url: str, block: str | None = None, token: str | None = None) -> str | GitRepository:
    """What workers clone. Without a token or ``block``, ``url`` itself. Otherwise ``url`` without its user
    info, with credentials referencing the Secret block ``block``; a token (``token``, else the one in an
    http(s) ``url``) is saved into that block first. A user name next to the token (``oauth2``,
    ``x-access-token``) stays in the credentials: it is not a secret."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return url  # ssh or a path: the worker's own keys and file permissions
    user, secret = (parts.username, parts.password) if parts.password else (None, parts.username)
    token = token or (unquote(secret) if secret else None)
    if not (token or block):
        return url
    name = block or GIT_CREDENTIALS_BLOCK
    if token:
        Secret(value=token).save(name, overwrite=True)
    credentials: dict[str, Any] = {"access_token": Secret.load(name)}  # a block reference in the pull step
    if user:
        credentials["username"] = unquote(user)
    return GitRepository(url=redact(url), credentials=credentials)


def reschedule_lost_runs(silence_s: int = 90) -> None:
    """Prefect's zombie-run automation, answering with a retry: a flow run that sent no heartbeat
    (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, set on workers) for ``silence_s`` goes back to Scheduled
    (AwaitingRetry, which frees its concurrency slot) and a worker picks it up again."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    name = "textclf: retry flow runs whose worker died"
    try:
        Automation.read(name=name)
        return
    except ValueError:
        pass
    Automation(
        name=name,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat"}
            | {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silence_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="AwaitingRetry",
                message=f"no heartbeat for {silence_s} s: its worker died; rescheduled",
                force=True,
            )
        ],
    ).create()


if __name__ == "__main__":
    main()

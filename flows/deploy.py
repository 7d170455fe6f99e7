"""The deployments: nightly training and hourly monitoring.

    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/deploy.py

serves ``training_pipeline`` as deployment ``flow.deployment`` with the cron schedule and timezone from
params.yaml and a concurrency limit of 1 (runs never overlap), and ``monitor`` as ``monitor.deployment``
every ``monitor.interval_minutes`` (drift starts the training deployment). The process stays up and runs
each scheduled flow run. ``--interval N`` replaces the training's cron schedule (smoke tests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron, Interval

from textclf.config import load_config
from textclf.env import configure_environment

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project-dir", default=str(HERE.parent), help="project the scheduled runs work on")
    parser.add_argument("--interval", type=float, help="seconds between runs instead of the cron schedule")
    args = parser.parse_args(argv)
    project = Path(args.project_dir).resolve()
    configure_environment(project)
    cfg = load_config(project / "params.yaml")
    schedule = (
        Interval(args.interval, timezone=cfg.flow.timezone)
        if args.interval
        else Cron(cfg.flow.cron, timezone=cfg.flow.timezone)
    )
    training = load_flow_from_entrypoint(f"{HERE / 'pipeline.py'}:training_pipeline")
    monitoring = load_flow_from_entrypoint(f"{HERE / 'monitor.py'}:monitor_flow")
    serve(
        training.to_deployment(
            name=cfg.flow.deployment,
            schedules=[schedule],
            concurrency_limit=1,  # a run waits while another is running
            parameters={"project_dir": str(project)},
            description="textclf: validate → prepare → train → evaluate → gate → package",
        ),
        monitoring.to_deployment(
            name=cfg.monitor.deployment,
            interval=cfg.monitor.interval_minutes * 60,
            parameters={"project_dir": str(project), "since_minutes": cfg.monitor.interval_minutes},
            description="textclf: recorded traffic vs the champion's training data; drift starts training",
        ),
    )


if __name__ == "__main__":
    main()

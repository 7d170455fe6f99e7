"""The nightly deployment of the training pipeline.

    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/deploy.py

serves ``training_pipeline`` as deployment ``flow.deployment`` with the cron schedule and timezone from
params.yaml and a concurrency limit of 1 (runs never overlap); the process stays up and runs each
scheduled flow run. ``--interval N`` replaces the cron schedule (smoke tests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    flow = load_flow_from_entrypoint(f"{HERE / 'pipeline.py'}:training_pipeline")
    flow.serve(
        name=cfg.flow.deployment,
        schedules=[schedule],
        global_limit=1,  # concurrency limit: a run waits while another is running
        parameters={"project_dir": str(project)},
        description="textclf: validate → prepare → train → evaluate → gate → package",
    )


if __name__ == "__main__":
    main()

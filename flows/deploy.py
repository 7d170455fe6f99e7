"""The nightly deployment of the training pipeline.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python flows/deploy.py

serves ``training_pipeline`` as deployment ``flow.deployment`` with the cron schedule and timezone from
params.yaml and a concurrency limit of 1 (runs never overlap); the process stays up and runs each
scheduled flow run. Start the server first with ``.venv/bin/prefect server start`` (README).
``--interval N`` replaces the cron schedule (smoke tests).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prefect.schedules import Cron, Interval

from textclf.config import load_config
from textclf.env import configure_environment

ROOT = Path(__file__).resolve().parents[1]


def _pipeline():
    # Imported as flows.pipeline from the project root: the runner re-imports the flow by that name
    # in each flow-run subprocess (which inherits this process's cwd).
    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from flows.pipeline import training_pipeline

    return training_pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project-dir", default=str(ROOT), help="project the scheduled runs work on")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--interval", type=float, help="seconds between runs instead of the cron schedule")
    args = parser.parse_args(argv)

    project = Path(args.project_dir).resolve()
    configure_environment(project)
    cfg = load_config(project / args.params)
    if args.interval:
        schedule = Interval(args.interval, timezone=cfg.flow.timezone)
    else:
        schedule = Cron(cfg.flow.cron, timezone=cfg.flow.timezone)
    _pipeline().serve(
        name=cfg.flow.deployment,
        schedules=[schedule],
        global_limit=1,  # concurrency limit: a run waits while another is running
        parameters={"project_dir": str(project), "params_file": args.params},
        description="textclf: validate → prepare → train → evaluate → gate → package",
    )


if __name__ == "__main__":
    main()

"""Process environment for entry points: keep every tool's state inside the project, telemetry off.

Called by the CLI and the flows only (never at import time). Values the user already set win.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path

# Set by the flow for the stage processes it starts: the Prefect runs their logs belong to.
ENV_FLOW_RUN_ID = "PREFECT__FLOW_RUN_ID"
ENV_TASK_RUN_ID = "TEXTCLF_PREFECT_TASK_RUN_ID"

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # progress bars are noise in logs (and in Prefect's UI)
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "textclf,dvc",  # library logs in the Prefect UI, not only stderr
}


def state_dirs(root: Path) -> dict[str, str]:
    """Tool state folders under the project root (git-ignored)."""
    return {
        "PREFECT_HOME": str(root / ".prefect"),
        "BENTOML_HOME": str(root / ".bentoml"),
        "XDG_CONFIG_HOME": str(root / ".cache" / "xdg"),
        # Absolute: `dvc exp run --temp` (textclf run -S) works in a copy of the repo, where a relative
        # core.site_cache_dir would point at a folder that does not exist ("unable to open database file").
        "DVC_SITE_CACHE_DIR": str(root / ".dvc" / "site_cache"),
    }


def configure_environment(root: Path) -> None:
    for key, value in {**TELEMETRY_OFF, **state_dirs(root.resolve())}.items():
        os.environ.setdefault(key, value)


def forward_logs_to_prefect() -> None:
    """In a stage process started by the flow (DVC runs ``textclf <stage>``), send the ``textclf`` log
    records to the task run that started it too, so the Prefect UI shows what the stage did."""
    flow_run, task_run = os.environ.get(ENV_FLOW_RUN_ID), os.environ.get(ENV_TASK_RUN_ID)
    if not (flow_run and task_run and os.environ.get("PREFECT_API_URL")):
        return
    from prefect.logging.handlers import APILogHandler

    def tag(record: logging.LogRecord) -> bool:
        record.flow_run_id, record.task_run_id = flow_run, task_run
        return True

    handler = APILogHandler()
    handler.addFilter(tag)
    logging.getLogger("textclf").addHandler(handler)
    atexit.register(handler.flush)

"""Process environment for entry points: keep every tool's state inside the project, telemetry off.

Called by the CLI and the flows only (never at import time). Values the user already set win.
"""

from __future__ import annotations

import os
from pathlib import Path

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def state_dirs(root: Path) -> dict[str, str]:
    """Tool state folders under the project root (git-ignored)."""
    return {
        "PREFECT_HOME": str(root / ".prefect"),
        "BENTOML_HOME": str(root / ".bentoml"),
        "XDG_CONFIG_HOME": str(root / ".cache" / "xdg"),
    }


def configure_environment(root: Path) -> None:
    for key, value in {**TELEMETRY_OFF, **state_dirs(root.resolve())}.items():
        os.environ.setdefault(key, value)

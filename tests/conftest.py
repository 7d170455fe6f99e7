"""Test isolation: every tool's state goes to a per-session temp folder, never the home folder,
and nothing reaches the network."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="textclf-tests-"))
_ENV = {
    "HOME": str(_STATE / "home"),
    "XDG_CONFIG_HOME": str(_STATE / "xdg"),
    "PREFECT_HOME": str(_STATE / "prefect"),
    "BENTOML_HOME": str(_STATE / "bentoml"),
    "HF_HOME": str(_STATE / "hf"),
    "DVC_SITE_CACHE_DIR": str(_STATE / "dvc-site"),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "TOKENIZERS_PARALLELISM": "false",
    # A git identity for the commits DVC experiments make (CI machines have none configured).
    "GIT_AUTHOR_NAME": "textclf-tests",
    "GIT_AUTHOR_EMAIL": "tests@textclf.invalid",
    "GIT_COMMITTER_NAME": "textclf-tests",
    "GIT_COMMITTER_EMAIL": "tests@textclf.invalid",
}
for _k, _v in _ENV.items():
    os.environ[_k] = _v
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
for _d in ("home", "xdg"):
    (_STATE / _d).mkdir(parents=True, exist_ok=True)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


def _reset_mlflow_globals() -> None:
    """mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI, which then wins over a project's
    embedded store in every later test of the session: start each module without it."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(var, None)
    import sys

    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None


@pytest.fixture(scope="module", autouse=True)
def _fresh_mlflow_globals_per_module():
    _reset_mlflow_globals()
    yield
    _reset_mlflow_globals()

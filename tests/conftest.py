"""Test isolation: every tool's state goes to a per-session temp folder, never the home folder,
and nothing reaches the network."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def _unwind(signum: int, frame: object) -> None:
    """SIGTERM / SIGHUP (CI cancelled, `.ci/run`'s trap) unwind the session like Ctrl-C: every ``with``
    block and fixture that started a server (bentoml serve, dockerd, the stack) stops it on the way out."""
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _unwind)
signal.signal(signal.SIGHUP, _unwind)


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


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private Docker daemon for the image and compose tiers (one per session, shared): data and exec
    roots in a temp folder, its own socket, stopped by PID. Yields the environment its clients use."""
    from projects import env

    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("debootstrap"):
        pytest.fail(
            "needs root, dockerd and debootstrap (apt-get install docker.io debootstrap; .ci/run does it)"
        )
    tmp = Path("/tmp") / f"textclf-docker-{os.getpid()}"  # short: the socket path has a length limit
    data, execroot, sock = tmp / "data", tmp / "exec", tmp / "docker.sock"
    for d in (data, execroot):
        d.mkdir(parents=True, exist_ok=True)
    log = (tmp_path_factory.mktemp("dockerd") / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(data), "--exec-root", str(execroot), "-H", f"unix://{sock}",
         "-p", str(tmp / "dockerd.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    # Debian's docker client first: it builds through the daemon's BuildKit (no buildx plugin needed).
    bin_dir = Path(sys.executable).parent
    denv = {**env(), "DOCKER_HOST": f"unix://{sock}", "PATH": f"/usr/bin:{bin_dir}:{os.environ['PATH']}"}
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "info"], env=denv, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and proc.poll() is None, "dockerd did not start"
            time.sleep(0.5)
        yield denv
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["umount", str(execroot / "netns" / "default")], capture_output=True)
        subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

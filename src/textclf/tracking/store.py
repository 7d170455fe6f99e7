"""Where MLflow keeps runs, models and artifacts.

One resolver decides the tracking URI so that the CLI, the flow, the gate and the tests all agree:
``MLFLOW_TRACKING_URI`` (a shared server) wins, then ``mlflow.tracking_uri`` in params.yaml, then the
embedded SQLite store under ``paths.mlflow_dir``. The registry always uses the same URI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.tracking import MlflowClient

from textclf.config import Config

log = logging.getLogger(__name__)

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_USER, ENV_PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
# the gate's service account (MANAGE on the registered model); the gate, promote and rollback use it
ENV_GATE_USER, ENV_GATE_PASSWORD = "TEXTCLF_GATE_MLFLOW_USERNAME", "TEXTCLF_GATE_MLFLOW_PASSWORD"
STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"


def store_dir(cfg: Config, root: Path) -> Path:
    """Absolute folder of the embedded store (``<root>/<paths.mlflow_dir>``)."""
    return (Path(root) / cfg.paths.mlflow_dir).resolve()


def embedded_tracking_uri(cfg: Config, root: Path) -> str:
    return f"sqlite:///{store_dir(cfg, root) / STORE_FILE}"


def tracking_uri(cfg: Config, root: Path) -> str:
    """The tracking (and registry) URI: env ``MLFLOW_TRACKING_URI``, else config, else embedded SQLite."""
    env = os.environ.get(ENV_TRACKING_URI, "").strip()
    if env:
        return env
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    return embedded_tracking_uri(cfg, root)


def redact(uri: str) -> str:
    """``uri`` without user info: what may be logged or published (credentials belong in
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, never in the URI)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def gate_account() -> Iterator[None]:
    """MLflow requests in this block use the gate's account when ``TEXTCLF_GATE_MLFLOW_USERNAME`` is set
    (MLflow reads the credentials from the environment on every request); else the caller's own."""
    user = os.environ.get(ENV_GATE_USER)
    if not user:
        yield
        return
    with mock.patch.dict(os.environ, {ENV_USER: user, ENV_PASSWORD: os.environ.get(ENV_GATE_PASSWORD, "")}):
        yield


def client(cfg: Config, root: Path) -> MlflowClient:
    """A client bound to the resolved store, without touching MLflow's global state."""
    uri = tracking_uri(cfg, root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def use_store(uri: str) -> None:
    """Point MLflow's process-global URIs (the fluent API; the registry resolving ``models:/m-<id>``)
    at ``uri`` WITHOUT the ``MLFLOW_TRACKING_URI`` variable that ``mlflow.set_tracking_uri`` also exports:
    that variable wins in :func:`tracking_uri`, and would point every later project at this store."""
    before = os.environ.get(ENV_TRACKING_URI)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if before is None:
        os.environ.pop(ENV_TRACKING_URI, None)
    else:
        os.environ[ENV_TRACKING_URI] = before


def configure_mlflow(cfg: Config, root: Path) -> str:
    """Point the fluent MLflow API at the resolved store and experiment; return the experiment id.

    The experiment is created when missing; with a local SQLite store its artifacts go to ``artifacts/``
    beside the database, not MLflow's default ``./mlruns`` under whatever the current directory is.
    """

    uri = tracking_uri(cfg, root)
    artifact_location: str | None = None
    if uri.startswith("sqlite:///"):  # a local store keeps its artifacts beside it, wherever the caller runs
        art = Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR
        art.mkdir(parents=True, exist_ok=True)
        artifact_location = art.as_uri()
    use_store(uri)
    name = cfg.mlflow.experiment
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        experiment_id = c.create_experiment(name, artifact_location=artifact_location)
        log.info("created MLflow experiment %s (%s) in %s", name, experiment_id, redact(uri))
    else:
        experiment_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(experiment_id)
            log.warning("restored deleted MLflow experiment %s", name)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id

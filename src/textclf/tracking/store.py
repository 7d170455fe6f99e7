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

import mlflow
from mlflow.tracking import MlflowClient

from textclf.config import Config

log = logging.getLogger(__name__)

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
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


def is_embedded(cfg: Config, root: Path) -> bool:
    return tracking_uri(cfg, root) == embedded_tracking_uri(cfg, root)


def client(cfg: Config, root: Path) -> MlflowClient:
    """A client bound to the resolved store, without touching MLflow's global state."""
    uri = tracking_uri(cfg, root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def configure_mlflow(cfg: Config, root: Path) -> str:
    """Point the fluent MLflow API at the resolved store and experiment; return the experiment id.

    The experiment is created when missing; in the embedded store its artifacts go to
    ``<paths.mlflow_dir>/artifacts`` rather than MLflow's default ``./mlruns`` under the cwd.
    """
    import mlflow

    uri = tracking_uri(cfg, root)
    artifact_location: str | None = None
    if uri == embedded_tracking_uri(cfg, root):
        art = store_dir(cfg, root) / ARTIFACTS_DIR
        art.mkdir(parents=True, exist_ok=True)  # SQLite needs the folder to exist
        artifact_location = art.as_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = cfg.mlflow.experiment
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        experiment_id = c.create_experiment(name, artifact_location=artifact_location)
        log.info("created MLflow experiment %s (%s) in %s", name, experiment_id, uri)
    else:
        experiment_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(experiment_id)
            log.warning("restored deleted MLflow experiment %s", name)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking URI at ``uri`` for a block, then restore it.

    MLflow 3's registry resolves a ``models:/m-<id>`` source through the *global* tracking store,
    not the client's, so ``create_model_version`` on a client bound elsewhere fails with
    "Logged model ... not found".
    """
    # The private global, not get_tracking_uri(): restoring its *default* would pin it (and the
    # MLFLOW_TRACKING_URI env var that set_tracking_uri exports) to the cwd's mlflow.db.
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)

"""The flow the compose tier deploys from a git origin and runs on compose.yaml's prefect-worker: one
task that logs a run to MLflow with the worker's own account (trainer) and an artifact through the
server's artifact proxy into S3. Its success needs the Prefect auth string, the MLflow account and
the artifact store, each as compose.yaml wires them."""

import mlflow
from prefect import flow, task


@task
def log_marker(marker: str, experiment: str) -> str:
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="compose-worker") as run:
        mlflow.log_param("marker", marker)
        mlflow.log_text(marker, "marker.txt")
    return run.info.run_id


@flow
def compose_worker_check(marker: str, experiment: str = "textclf") -> str:
    return log_marker(marker, experiment)

"""The names stages agree on: files a stage writes and a later one reads, metric names, environment
variables. Writers and readers import them from here, so a rename is one edit.

Paths are relative to the ``paths.*`` folder (or MLflow run artifact folder) named in each comment.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


def split_file(split: str) -> str:
    """``<paths.prepared>/<split>.parquet``."""
    return f"{split}.parquet"


MANIFEST_FILE = "manifest.json"  # <paths.prepared>: what prepare dropped, and why

# <paths.reports>/{raw,prepared}: validation results
SUMMARY_FILE = "summary.json"
DATA_DOCS_DIR = "data_docs"
GATE_RECORDS_DIR = "gate"  # <paths.reports>/gate and the candidate run's artifacts: decision records

# <paths.evaluation>
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"  # id, text, gold, predicted, correct, confidence, prob_<label>
PROB_PREFIX = "prob_"  # a class's probability column, here and in the pyfunc model's output
VARIANTS_DIR = "variants"
PARITY_FILE = "parity.json"  # <paths.evaluation>/variants: every variant's figures

# <paths.training>: the MLflow run the train stage opened (evaluate re-opens it)
RUN_FILE = "mlflow_run.json"
RUN_ID_FILE = "mlflow_run_id"  # <paths.checkpoints>: the run these checkpoints belong to

# MLflow run artifact folders and files the monitor and the gate read back
ARTIFACT_PREPARED_DIR = "prepared"
ARTIFACT_EVAL_DIR = "eval"
ARTIFACT_TRAIN = f"{ARTIFACT_PREPARED_DIR}/{split_file('train')}"
ARTIFACT_PREDICTIONS = f"{ARTIFACT_EVAL_DIR}/{PREDICTIONS_FILE}"

# MLflow metric names: the model's test metrics and the baseline's, e.g. test_macro_f1
BASELINE_PREFIX = "baseline_"
TEST_PREFIX = "test_"
BASELINE_TEST_PREFIX = f"{BASELINE_PREFIX}{TEST_PREFIX}"

# Environment variables
ENV_PARAMS = "TEXTCLF_PARAMS"  # the config file (`textclf --params`), for the stage commands DVC runs
ENV_MONITORING_DIR = "TEXTCLF_MONITORING_DIR"  # overrides serve.monitoring.dir (containers, workers)
ENV_PROGRESS_ARTIFACT = "TEXTCLF_PROGRESS_ARTIFACT_ID"  # set by the flow for the train stage


def now() -> str:
    """UTC now as ISO 8601 with milliseconds: the timestamp of every record textclf writes."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def read_run_record(training_dir: Path) -> dict[str, str] | None:
    """``<paths.training>/mlflow_run.json`` (run_id, model_uri), written by the train stage; None before."""
    path = training_dir / RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_json(obj: Any, path: Path) -> None:
    """Sorted, indented UTF-8 JSON (diffable under DVC and git); creates the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def file_digests(root: Path, prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``root`` by ``prefix`` + relative path, leaving out the names in
    ``skip``: what a seal records and what a reader compares with it (see :func:`digest_problems`)."""
    root = Path(root)
    return {
        prefix + f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name not in skip
    }


def digest_problems(sealed: dict[str, str], found: dict[str, str], whole: str = "") -> list[str]:
    """What differs between a seal and the files found: changed and unsealed files, and sealed files
    under ``whole`` (a prefix whose every file must be there) that are missing. Empty: they match."""
    changed = sorted(n for n in found if n in sealed and sealed[n] != found[n])
    added = sorted(n for n in found if n not in sealed)
    missing = sorted(n for n in sealed if n.startswith(whole) and n not in found)
    return [
        f"{what} {names}"
        for what, names in (("changed", changed), ("not sealed", added), ("missing", missing))
        if names
    ]

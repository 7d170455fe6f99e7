"""Log one training + evaluation to MLflow: params, metrics, datasets, artifacts, lineage, model."""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from textclf.config import Config
from textclf.tracking.lineage import TAG_DIGEST_PREFIX, collect_lineage
from textclf.tracking.pyfunc import TEXT_COLUMN, log_pyfunc_model
from textclf.tracking.store import configure_mlflow

log = logging.getLogger(__name__)

PARAM_SECTIONS = ("data", "prepare", "model", "train", "evaluate")
# Prepared splits always carry id/text/label, whatever the raw column names were.
PREPARED_TARGET_COLUMN = "label"
SPLIT_CONTEXTS = {"train": "train", "val": "validation", "test": "test"}
TRANSFORMER_KEY = "transformer"
MODEL_NAME = "model"
N_INPUT_EXAMPLES = 3


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    experiment_id: str
    model_uri: str  # models:/m-<id>: register this one
    model_id: str
    dataset_digests: dict[str, str]


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists and empty mappings become JSON strings."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = _param_value(value)
    return out


def run_params(cfg: Config) -> dict[str, str]:
    dumped = cfg.model_dump(mode="json")
    return flatten_params({s: dumped[s] for s in PARAM_SECTIONS})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def history_steps(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """(step, numeric metrics) per history entry.

    The step is the entry's ``step`` if given, else its ``epoch`` when whole, else its 1-based position
    (fractional epochs still reach MLflow as the ``epoch`` metric).
    """
    out = []
    for pos, entry in enumerate(history, start=1):
        if "step" in entry and _is_number(entry["step"]):
            step = int(entry["step"])
        elif _is_number(entry.get("epoch")) and float(entry["epoch"]).is_integer():
            step = int(entry["epoch"])
        else:
            step = pos
        metrics = {k: float(v) for k, v in entry.items() if k != "step" and _is_number(v)}
        out.append((step, metrics))
    return out


def test_metric_key(source: str, metric: str) -> str:
    """``transformer`` results are ``test_<metric>``; any other source ``<source>_test_<metric>``."""
    return f"test_{metric}" if source == TRANSFORMER_KEY else f"{source}_test_{metric}"


def _artifact_dir(path: Path, base: Path) -> str | None:
    """Where ``path`` goes in the run's artifacts: its folder relative to ``paths.artifacts`` if inside."""
    try:
        rel = path.resolve().relative_to(base.resolve())
    except ValueError:
        return None
    parent = rel.parent if path.is_file() else rel
    return None if str(parent) in ("", ".") else parent.as_posix()


def _log_artifacts(paths: Sequence[Path], base: Path) -> list[Path]:
    skipped = []
    for path in map(Path, paths):
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path=_artifact_dir(path, base))
        elif path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=_artifact_dir(path, base) or path.name)
        else:
            log.warning("artifact %s does not exist; not logged", path)
            skipped.append(path)
    return skipped


def _log_inputs(
    splits: Mapping[str, pd.DataFrame], split_paths: Mapping[str, str]
) -> dict[str, mlflow.data.pandas_dataset.PandasDataset]:
    from mlflow.data.pandas_dataset import from_pandas

    datasets = {}
    for split, frame in splits.items():
        source = split_paths.get(split)
        if source is None:
            raise ValueError(f"no source path given for split {split!r}")
        with warnings.catch_warnings():
            # A relative path matches MLflow's local-artifact source twice; it picks it and warns.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            ds = from_pandas(frame, source=str(source), name=split, targets=PREPARED_TARGET_COLUMN)
        mlflow.log_input(ds, context=SPLIT_CONTEXTS.get(split, split))
        datasets[split] = ds
    return datasets


@contextmanager
def _run_scope(cfg: Config, root: Path, run_name: str | None) -> Iterator[tuple[Any, str]]:
    """The active run if any (left open), else a new run in the configured experiment."""
    active = mlflow.active_run()
    if active is not None:
        yield active, active.info.experiment_id
        return
    experiment_id = configure_mlflow(cfg, root)
    with mlflow.start_run(run_name=run_name, experiment_id=experiment_id) as run:  # FAILED on error
        yield run, experiment_id


def log_training_run(
    cfg: Config,
    root: Path,
    *,
    model_dir: Path,
    splits: Mapping[str, pd.DataFrame],
    split_paths: Mapping[str, str],
    history: Sequence[Mapping[str, Any]],
    train_summary: Mapping[str, float],
    test_metrics: Mapping[str, Mapping[str, float]],
    artifacts: Sequence[Path] = (),
    run_name: str | None = None,
) -> LoggedRun:
    """Record a finished training + evaluation in MLflow and log the model as a pyfunc.

    Uses the active run if there is one, else starts (and ends) a new run in ``cfg.mlflow.experiment``.
    ``splits``/``split_paths`` are keyed by split name (train/val/test); ``split_paths`` are the
    DVC-tracked sources (e.g. ``artifacts/prepared/train.parquet``). ``history`` holds one dict of
    metrics per evaluation (with ``epoch``); ``train_summary`` e.g. padding efficiency, wall time,
    samples/s; ``test_metrics`` maps ``transformer``/``baseline`` to metric dicts.
    """
    root = Path(root)
    with _run_scope(cfg, root, run_name) as (run, experiment_id):
        mlflow.set_tags(collect_lineage(cfg, root).tags())
        mlflow.log_params(run_params(cfg))
        for step, metrics in history_steps(history):
            mlflow.log_metrics(metrics, step=step)
        summary = {k: float(v) for k, v in train_summary.items() if _is_number(v)}
        if summary:
            mlflow.log_metrics(summary)

        datasets = _log_inputs(splits, split_paths)
        digests = {split: ds.digest for split, ds in datasets.items()}
        mlflow.set_tags({TAG_DIGEST_PREFIX + split: d for split, d in digests.items()})

        skipped = _log_artifacts(artifacts, root / cfg.paths.artifacts)
        if skipped:
            mlflow.set_tag("textclf.missing_artifacts", ",".join(p.name for p in skipped))

        examples = splits["test"][TEXT_COLUMN].head(N_INPUT_EXAMPLES).tolist() if "test" in splits else []
        info = log_pyfunc_model(model_dir, examples, name=MODEL_NAME)

        # Linked to the test dataset (and the transformer's to its logged model) for MLflow 3's model view.
        test_ds = datasets.get("test")
        for source, metrics in test_metrics.items():
            model_id = info.model_id if source == TRANSFORMER_KEY else None
            for metric, value in metrics.items():
                if _is_number(value):
                    key = test_metric_key(source, metric)
                    mlflow.log_metric(key, float(value), model_id=model_id, dataset=test_ds)
        run_id = run.info.run_id
    log.info("logged MLflow run %s with model %s", run_id, info.model_uri)
    return LoggedRun(
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=info.model_uri,
        model_id=info.model_id,
        dataset_digests=digests,
    )

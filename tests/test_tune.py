"""`textclf tune`: a real Optuna study whose trials are nested MLflow runs, on the val split."""

from __future__ import annotations

from pathlib import Path

import yaml

from textclf.config import apply_overrides, config_from_dict
from textclf.train.tune import BEST_PARAMS_FILE, nested, params_from, tune
from train_fixtures import make_frame, tiny_config


def test_tiny_sweep_logs_nested_runs_and_writes_best_params(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    prepared = tmp_path / "artifacts" / "prepared"
    prepared.mkdir(parents=True)
    make_frame(160).to_parquet(prepared / "train.parquet")
    make_frame(60, seed=1).to_parquet(prepared / "val.parquet")
    space = {
        "train.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True, "integer": False, "choices": None},
        "model.architecture.dropout": {
            "low": None,
            "high": None,
            "log": False,
            "integer": False,
            "choices": [0.0, 0.1],
        },
    }
    raw = tiny_config(epochs=2).model_dump(mode="json")
    raw["tune"].update(space=space, startup_trials=1, seed=0)  # the whole space replaced, not merged
    cfg = config_from_dict(raw)

    result = tune(cfg, tmp_path, trials=3)

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    parent = c.get_run(result.parent_run_id)
    children = c.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert len(children) == 3 == sum(result.trials.values())
    assert all(set(space) <= set(run.data.params) for run in children)
    assert {run.data.tags["textclf.tune.state"] for run in children} <= {"complete", "pruned"}
    assert all("val_macro_f1" in run.data.metrics for run in children)  # the epoch curve, per trial
    complete = [r for r in children if r.data.tags["textclf.tune.state"] == "complete"]
    assert len(complete) == result.trials["COMPLETE"] >= 1
    assert result.best_val_macro_f1 == max(r.data.metrics["best_val_macro_f1"] for r in complete)
    assert parent.data.metrics["best_val_macro_f1"] == result.best_val_macro_f1

    record = yaml.safe_load((tmp_path / "artifacts" / "tune" / BEST_PARAMS_FILE).read_text())
    assert set(record["params"]) == set(space) and record["mlflow_parent_run"] == parent.info.run_id
    overrides = params_from(result.path)  # what `textclf run --params-from` passes as -S
    assert sorted(o.split("=")[0] for o in overrides) == sorted(space)
    again = apply_overrides(
        cfg, nested({k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)})
    )
    assert again.train.learning_rate == record["params"]["train.learning_rate"]
    assert again.model.architecture.dropout == record["params"]["model.architecture.dropout"]

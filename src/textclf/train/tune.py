"""``textclf tune``: hyperparameter search on the validation split, never on test.

Optuna's TPE sampler proposes values for the dotted params.yaml keys in ``tune.space``; each trial trains
with them (the same :func:`train_model` as the train stage) and scores the best epoch's val macro-F1.
The median pruner stops a trial whose val macro-F1 after an epoch is below the median of earlier trials
at that epoch. Every trial is a nested MLflow run (params, step metrics, state) under one parent run.
The best values go to ``<paths.tune>/best_params.yaml``; ``textclf run --params-from`` takes them as a
DVC experiment. params.yaml is never written.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from textclf.config import Config, TuneDim, apply_overrides
from textclf.data.prepare import read_split
from textclf.errors import ConfigError
from textclf.tracking.run import step_metrics
from textclf.tracking.store import configure_mlflow
from textclf.train.trainer import train_model

log = logging.getLogger(__name__)

BEST_PARAMS_FILE = "best_params.yaml"


@dataclass(frozen=True)
class TuneResult:
    best_params: dict[str, Any]
    best_val_macro_f1: float
    trials: dict[str, int]  # count per final state: COMPLETE, PRUNED, FAIL
    parent_run_id: str
    path: Path


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"train.learning_rate": 1e-4}`` → ``{"train": {"learning_rate": 1e-4}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def suggest(trial: Any, name: str, dim: TuneDim) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(name, list(dim.choices))
    if dim.integer:
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)  # type: ignore[arg-type]
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


def pruning_callback(trial: Any) -> Any:
    """Reports each epoch's val macro-F1 to the trial; stops the training when the pruner says so."""
    from transformers import TrainerCallback

    class Pruning(TrainerCallback):
        pruned = False

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any) -> None:
            trial.report(float(metrics["eval_macro_f1"]), step=round(state.epoch))
            if trial.should_prune():
                self.pruned = True
                control.should_training_stop = True

    return Pruning()


def _objective(cfg: Config, splits: dict[str, Any]) -> Any:
    """One trial: train with the suggested values in a nested MLflow run; val macro-F1 of the best epoch."""
    import mlflow
    import optuna

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, dim) for key, dim in cfg.tune.space.items()}
        trial_cfg = apply_overrides(cfg, nested(params))
        pruning = pruning_callback(trial)
        with (
            mlflow.start_run(run_name=f"trial-{trial.number}", nested=True),
            tempfile.TemporaryDirectory() as tmp,
        ):
            mlflow.log_params(params)
            result = train_model(
                trial_cfg, splits["train"], splits["val"], Path(tmp) / "model", Path(tmp) / "ckpt",
                callbacks=[step_metrics(), pruning],
            )  # fmt: skip
            value = float(result.best["val_macro_f1"])
            mlflow.log_metric("best_val_macro_f1", value)
            mlflow.set_tag("textclf.tune.state", "pruned" if pruning.pruned else "complete")
        if pruning.pruned:
            raise optuna.TrialPruned(f"val macro-F1 below the median at epoch {len(result.history)}")
        return value

    return objective


def tune(
    cfg: Config, root: Path, trials: int | None = None, timeout_minutes: float | None = None
) -> TuneResult:
    """Run the search; returns the best trial and writes ``<paths.tune>/best_params.yaml``."""
    import mlflow
    import optuna

    for key, dim in cfg.tune.space.items():  # an unknown key fails now, naming it, not in the first trial
        apply_overrides(cfg, nested({key: dim.choices[0] if dim.choices else dim.low}))
    splits = {s: read_split(root / cfg.paths.prepared, s) for s in ("train", "val")}
    timeout = timeout_minutes if timeout_minutes is not None else cfg.tune.timeout_minutes
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=cfg.tune.startup_trials),
    )
    configure_mlflow(cfg, root)
    with mlflow.start_run(run_name="tune") as parent:
        mlflow.log_params({"tune.trials": trials or cfg.tune.trials, "tune.timeout_minutes": timeout})
        mlflow.set_tag("textclf.tune.space", yaml.safe_dump(cfg.model_dump(mode="json")["tune"]["space"]))
        study.optimize(
            _objective(cfg, splits),
            n_trials=trials or cfg.tune.trials,
            timeout=timeout * 60 if timeout else None,
        )
        states = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
        done = {k: v for k, v in states.items() if v}
        if not states["COMPLETE"]:
            raise ConfigError(f"no tuning trial completed ({done}); see the nested MLflow runs")
        best = study.best_trial
        record = {
            "params": best.params,
            "val_macro_f1": best.value,
            "trial": best.number,
            "trials": done,
            "mlflow_parent_run": parent.info.run_id,
        }
        out = root / cfg.paths.tune / BEST_PARAMS_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
        mlflow.log_metric("best_val_macro_f1", float(best.value))
        mlflow.log_artifact(str(out))
    log.info("best of %s: val macro-F1 %.4f with %s", done, best.value, best.params)
    return TuneResult(best.params, float(best.value), done, parent.info.run_id, out)


def params_from(path: Path) -> list[str]:
    """``KEY=VALUE`` overrides (``textclf run -S`` form) from a best_params.yaml."""
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    record = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    params = record.get("params", record)
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path} holds no params (a mapping of dotted keys, under 'params')")
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]  # JSON is YAML: DVC parses it

"""One MLflow run per training, from the train stage to the evaluate stage, against a real SQLite store
in a temp project (a tiny git repo with data.dvc and dvc.lock), plus lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from projects import TINY, env, params  # noqa: E402
from textclf import stages  # noqa: E402
from textclf.config import Config, apply_overrides  # noqa: E402
from textclf.data.prepare import split_digest  # noqa: E402
from textclf.errors import TextclfError  # noqa: E402
from textclf.model.predictor import Predictor  # noqa: E402
from textclf.tracking.lineage import lineage_report, lineage_tags  # noqa: E402
from textclf.tracking.store import client, tracking_uri  # noqa: E402
from train_fixtures import make_frame  # noqa: E402

DATA_MD5 = "0123456789abcdef0123456789abcdef.dir"
PREPARED_MD5 = "fedcba9876543210fedcba9876543210.dir"
RAW_TEXTS = ["很好，非常喜欢！", "  质量　很差  ", "ＡＢＣ快递太慢了", "服务一般"]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], env=env(), capture_output=True, text=True, check=True
    ).stdout.strip()


def _project(root: Path, train_over: dict | None = None) -> tuple[Config, Path]:
    cfg = params({**TINY, "data": {"labels": None}, "train": {**TINY["train"], **(train_over or {})}})
    prepared = root / cfg.paths.prepared
    prepared.mkdir(parents=True)
    for name, (n, seed) in {"train": (120, 1), "val": (30, 2), "test": (40, 3)}.items():
        frame = make_frame(n, seed=seed).assign(id=lambda f, s=name: [f"{s}{i}" for i in range(len(f))])  # noqa: B023
        frame.to_parquet(prepared / f"{name}.parquet", index=False)
    (prepared / "manifest.json").write_text("{}")
    for target in ("raw", "prepared"):
        (root / cfg.paths.reports / target).mkdir(parents=True)
        (root / cfg.paths.reports / target / "summary.json").write_text('{"success": true}')
    (root / "data.dvc").write_text(f"outs:\n- md5: {DATA_MD5}\n  path: data\n")
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: 'true'\n    outs:\n    - path: artifacts/prepared\n"
        f"      hash: md5\n      md5: {PREPARED_MD5}\n"
    )
    (root / "dvc.yaml").write_text("stages:\n  prepare:\n    cmd: 'true'\n    outs: [artifacts/prepared]\n")
    (root / ".gitignore").write_text("artifacts/\nmlflow/\n")
    _git(root, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)  # a real DVC repo
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    return cfg, root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg, root = _project(tmp_path_factory.mktemp("proj"))
    os.environ["PREFECT__FLOW_RUN_ID"] = "flow-run-123"  # what the flow passes to its stages
    try:
        record = stages.run_train(cfg, root)
    finally:
        del os.environ["PREFECT__FLOW_RUN_ID"]
    evaluation = stages.run_evaluate(cfg, root)
    c = client(cfg, root)
    return {
        "cfg": cfg,
        "root": root,
        "record": record,
        "eval": evaluation,
        "c": c,
        "run": c.get_run(record["run_id"]),
    }


# --------------------------------------------------------------------------- the run
def test_one_run_from_train_to_evaluate(project: dict) -> None:
    run, root = project["run"], project["root"]
    assert run.info.status == "FINISHED" and project["eval"]["run_id"] == run.info.run_id
    assert json.loads((root / "artifacts/train/mlflow_run.json").read_text()) == project["record"]
    assert tracking_uri(project["cfg"], root) == f"sqlite:///{root.resolve()}/mlflow/mlflow.db"
    assert len(project["c"].search_runs([run.info.experiment_id])) == 1


def test_params_are_the_effective_config(project: dict) -> None:
    params = project["run"].data.params
    assert params["train.learning_rate"] == "0.003"
    assert params["model.architecture.hidden_size"] == "32"
    assert params["data.labels"] == "null"
    assert not any(k.startswith(("paths.", "mlflow.", "gate.")) for k in params)


def test_metrics_per_step_per_epoch_and_test(project: dict) -> None:
    c, run = project["c"], project["run"]
    loss = c.get_metric_history(run.info.run_id, "loss")
    assert len(loss) >= 5 and len({m.step for m in loss}) == len(loss)  # one point per logging step
    assert {m.key for m in [*c.get_metric_history(run.info.run_id, "learning_rate")]} == {"learning_rate"}
    assert len(c.get_metric_history(run.info.run_id, "grad_norm")) == len(loss)
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val_macro_f1")] == [8, 16, 24]  # epochs
    m = run.data.metrics
    metrics = json.loads((project["root"] / "artifacts/eval/metrics.json").read_text())
    assert m["test_macro_f1"] == pytest.approx(metrics["transformer"]["macro_f1"])
    assert m["baseline_test_macro_f1"] == pytest.approx(metrics["baseline"]["macro_f1"])
    assert m["padding_efficiency"] > 0 and m["train_samples_per_s"] > 0
    lm = c.get_logged_model(project["record"]["model_uri"].removeprefix("models:/"))
    assert {x.key for x in lm.metrics or []} >= {"test_macro_f1", "test_accuracy"}


def test_datasets_and_digest_tags(project: dict) -> None:
    run, root = project["run"], project["root"]
    inputs = {di.dataset.name: di for di in run.inputs.dataset_inputs}
    contexts = {n: {t.key: t.value for t in di.tags}["mlflow.data.context"] for n, di in inputs.items()}
    assert contexts == {"train": "train", "val": "validation", "test": "test"}
    for name, di in inputs.items():
        assert json.loads(di.dataset.source) == {"uri": f"artifacts/prepared/{name}.parquet"}
        frame = pd.read_parquet(root / f"artifacts/prepared/{name}.parquet")
        assert run.data.tags[f"textclf.digest.{name}"] == split_digest(frame)


def test_lineage_tags(project: dict) -> None:
    root, tags = project["root"], project["run"].data.tags
    assert tags["textclf.data_dvc_md5"] == DATA_MD5
    assert tags["textclf.dvc_lock.prepare"] == PREPARED_MD5
    assert tags["textclf.git_commit"] == _git(root, "rev-parse", "HEAD")
    assert tags["textclf.git_dirty"] == "false"  # dvc.lock and ignored outputs do not count
    assert tags["textclf.base_model"] == "scratch:char-bert"
    assert tags["textclf.prefect_flow_run_id"] == "flow-run-123"
    changed = apply_overrides(project["cfg"], {"train": {"learning_rate": 1e-3}})
    assert lineage_tags(changed, root)["textclf.params_hash"] != tags["textclf.params_hash"]
    (root / "data.dvc").write_text((root / "data.dvc").read_text() + "# edited\n")
    try:
        assert lineage_tags(project["cfg"], root)["textclf.git_dirty"] == "true"
    finally:
        _git(root, "checkout", "--", "data.dvc")


def test_artifacts_and_training_ids(project: dict) -> None:
    c, run_id, root = project["c"], project["run"].info.run_id, project["root"]
    top = {a.path for a in c.list_artifacts(run_id)}
    assert {"eval", "validation", "prepared", "train_ids.txt"} <= top
    assert {a.path for a in c.list_artifacts(run_id, "eval/plots")} >= {
        "eval/plots/roc.csv",
        "eval/plots/confusion_matrix.png",
    }
    ids = Path(c.download_artifacts(run_id, "train_ids.txt", str(root / "dl"))).read_text().split()
    assert ids == pd.read_parquet(root / "artifacts/prepared/train.parquet")["id"].tolist()


def test_pyfunc_predicts_raw_text_like_predictor(project: dict) -> None:
    model = mlflow.pyfunc.load_model(project["record"]["model_uri"])
    out = model.predict(pd.DataFrame({"text": RAW_TEXTS}))
    preds = Predictor(project["root"] / "artifacts/model", device="cpu").predict(RAW_TEXTS)
    assert out["label"].tolist() == [p.label for p in preds]
    np.testing.assert_allclose(out["prob_pos"], [p.probabilities["pos"] for p in preds], rtol=1e-5, atol=1e-6)
    assert model.metadata.signature.inputs.input_names() == ["text"]


def test_evaluate_failure_marks_the_run_failed(project: dict, tmp_path: Path) -> None:
    cfg, root = _project(tmp_path / "p")
    record = stages.run_train(cfg, root)
    (root / cfg.paths.prepared / "test.parquet").write_bytes(b"not parquet")
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises
        stages.run_evaluate(cfg, root)
    assert client(cfg, root).get_run(record["run_id"]).info.status == "FAILED"


def test_loss_curve_grows_while_training(tmp_path: Path) -> None:
    """What a person watching the MLflow UI sees: the run exists from the first step and its loss
    history grows while `textclf train` is still running."""
    cfg, root = _project(tmp_path / "p", {"epochs": 30, "logging_steps": 2, "checkpoint_steps": 1000})
    (root / "params.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "textclf"), "train"],
        cwd=root,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_file, c, seen = root / cfg.paths.checkpoints / "mlflow_run_id", client(cfg, root), []
    while proc.poll() is None:
        if run_file.is_file() and run_file.read_text():
            n = len(c.get_metric_history(run_file.read_text(), "loss"))
            if proc.poll() is None:
                seen.append(n)
        time.sleep(0.2)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert seen == sorted(seen) and len({n for n in seen if n > 0}) >= 3, seen  # several, growing


# --------------------------------------------------------------------------- lineage
def test_lineage_report_complete_for_registered_model(project: dict) -> None:
    from textclf.tracking.store import use_store

    c, record = project["c"], project["record"]
    use_store(c.tracking_uri)
    c.create_registered_model("tiny-clf")
    mv = c.create_model_version("tiny-clf", record["model_uri"], run_id=record["run_id"])
    c.set_registered_model_alias("tiny-clf", "champion", mv.version)
    report = lineage_report(c, f"models:/tiny-clf/{mv.version}")
    text = report.render()
    assert report.complete, text
    assert "tiny-clf v1 (@champion)" in text and record["run_id"] in text and "FINISHED" in text
    for split in ("train", "val", "test"):
        assert f"from artifacts/prepared/{split}.parquet" in text
    assert DATA_MD5 in text and _git(project["root"], "rev-parse", "HEAD") in text
    assert lineage_report(c, "models:/tiny-clf@champion").complete
    assert lineage_report(c, record["run_id"]).complete


def test_lineage_report_names_missing_links(project: dict, tmp_path: Path) -> None:
    c = project["c"]
    run = c.create_run(project["run"].info.experiment_id)
    for key, value in lineage_tags(project["cfg"], tmp_path).items():  # not a git repo, no data.dvc
        c.set_tag(run.info.run_id, key, value)
    report = lineage_report(c, run.info.run_id)
    assert not report.complete
    assert report.render().splitlines()[-1] == "missing links: datasets, data.dvc md5, git commit"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("models:/no-such-model/1", "no such model version"),
        ("models:/no-such-model@champion", "no such model"),
        ("0" * 32, "not found"),
    ],
)
def test_bad_refs_give_clear_errors(project: dict, ref: str, message: str) -> None:
    with pytest.raises(TextclfError, match=message):
        lineage_report(project["c"], ref)


@pytest.mark.integration
def test_train_processes_starts_ddp_under_torchrun(tmp_path: Path) -> None:
    """train.processes: 2 makes the unchanged stage command (`textclf train`) train with DDP (gloo on
    CPU); rank 0 alone logs: one MLflow run, world size 2."""
    cfg, root = _project(tmp_path / "p", {"processes": 2, "epochs": 1})
    (root / "params.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "textclf"), "train"],
        cwd=root,
        env={**env(), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    timings = json.loads((root / cfg.paths.training / "timings.json").read_text())
    assert timings["world_size"] == 2
    c = client(cfg, root)
    runs = c.search_runs([c.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["world_size"] == 2

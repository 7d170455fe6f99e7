"""MLflow tracking and lineage against a real SQLite store in a temp project (a tiny git repo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")
torch = pytest.importorskip("torch")

from textclf.config import Config, NormalizeConfig, apply_overrides  # noqa: E402
from textclf.errors import TextclfError  # noqa: E402
from textclf.model.predictor import Predictor, Preprocessing  # noqa: E402
from textclf.tracking import (  # noqa: E402
    configure_mlflow,
    lineage_report,
    lineage_tags,
    log_training_run,
    tracking_uri,
)
from textclf.tracking.lineage import (  # noqa: E402
    SCRATCH_MODEL,
    collect_lineage,
    dvc_lock_hashes,
    params_hash,
    prefect_flow_run_id,
)
from textclf.tracking.run import flatten_params, history_steps  # noqa: E402
from textclf.tracking.store import client  # noqa: E402

LABELS = ["negative", "positive"]
DATA_MD5 = "0123456789abcdef0123456789abcdef.dir"
PREPARED_MD5 = "fedcba9876543210fedcba9876543210.dir"
CHARS = list("好坏很不非常差棒喜欢讨厌服务质量一般快递慢的了是")
RAW_TEXTS = ["很好，非常喜欢！", "  质量　很差  ", "ＡＢＣ快递太慢了", "服务一般"]


def _git(root: Path, *args: str) -> str:
    ident = [
        "-c",
        "user.name=textclf-test",
        "-c",
        "user.email=test@example.invalid",
        "-c",
        "commit.gpgsign=false",
    ]
    res = subprocess.run(["git", *ident, "-C", str(root), *args], capture_output=True, text=True, check=True)
    return res.stdout.strip()


def _tiny_model(model_dir: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS, "abc", "，", "！"]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={lab: i for i, lab in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    Preprocessing(normalize=NormalizeConfig(), max_length=32).save(model_dir)


def _splits() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        texts = ["".join(rng.choice(CHARS, size=int(rng.integers(3, 10)))) + f"{split}{i}" for i in range(n)]
        out[split] = pd.DataFrame(
            {
                "id": [f"{split}-{i}" for i in range(n)],
                "text": texts,
                "label": [LABELS[i % 2] for i in range(n)],
            }
        )
    return out


def _write_dvc_files(root: Path) -> None:
    (root / "data.dvc").write_text(
        f"outs:\n- md5: {DATA_MD5}\n  size: 123\n  nfiles: 1\n  hash: md5\n  path: data\n", encoding="utf-8"
    )
    lock = {
        "schema": "2.0",
        "stages": {
            "validate_raw": {
                "cmd": "textclf validate raw",
                "outs": [{"path": "artifacts/reports/raw", "md5": "aa.dir"}],
            },
            "prepare": {
                "cmd": "textclf prepare",
                "deps": [{"path": "data/reviews.csv", "md5": "bb"}],
                "outs": [{"path": "artifacts/prepared", "hash": "md5", "md5": PREPARED_MD5}],
            },
        },
    }
    (root / "dvc.lock").write_text(json.dumps(lock), encoding="utf-8")  # JSON is valid YAML


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A committed tiny project, a tiny model, and one logged training run."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("proj")
    _git(root, "init", "-q")
    (root / ".gitignore").write_text("/mlflow/\n/artifacts/\n", encoding="utf-8")
    _write_dvc_files(root)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "init")

    cfg = Config()
    model_dir = root / "artifacts" / "model"
    model_dir.mkdir(parents=True)
    _tiny_model(model_dir)
    eval_dir = root / "artifacts" / "eval"
    (eval_dir / "plots").mkdir(parents=True)
    (eval_dir / "metrics.json").write_text('{"macro_f1": 0.5}', encoding="utf-8")
    (eval_dir / "plots" / "confusion_matrix.png").write_bytes(b"\x89PNG fake")

    splits = _splits()
    split_paths = {s: f"artifacts/prepared/{s}.parquet" for s in splits}
    history = [
        {"epoch": 1.0, "train_loss": 0.9, "val_macro_f1": 0.55},
        {"epoch": 2.0, "train_loss": 0.7, "val_macro_f1": 0.65},
    ]
    logged = log_training_run(
        cfg,
        root,
        model_dir=model_dir,
        splits=splits,
        split_paths=split_paths,
        history=history,
        train_summary={"padding_efficiency": 0.8, "wall_time_s": 12.5, "samples_per_s": 40.0},
        test_metrics={"transformer": {"macro_f1": 0.61, "accuracy": 0.62}, "baseline": {"macro_f1": 0.58}},
        artifacts=[eval_dir / "metrics.json", eval_dir / "plots", root / "artifacts" / "nope.txt"],
        run_name="unit",
    )
    c = client(cfg, root)
    return {
        "root": root,
        "cfg": cfg,
        "model_dir": model_dir,
        "splits": splits,
        "logged": logged,
        "client": c,
        "run": c.get_run(logged.run_id),
    }


# --------------------------------------------------------------------------- pure helpers
def test_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = Config()
    assert tracking_uri(cfg, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    cfg2 = apply_overrides(cfg, {"mlflow": {"tracking_uri": "http://example.invalid:5000"}})
    assert tracking_uri(cfg2, tmp_path) == "http://example.invalid:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking_uri(cfg2, tmp_path) == "sqlite:////elsewhere/x.db"


def test_flatten_params_and_history_steps() -> None:
    flat = flatten_params({"model": {"pretrained": None, "arch": {"hidden": 16}, "prof": {}, "l": [1, 2]}})
    assert flat == {
        "model.pretrained": "null",
        "model.arch.hidden": "16",
        "model.prof": "{}",
        "model.l": "[1, 2]",
    }
    steps = history_steps(
        [{"epoch": 1.0, "loss": 1.0, "note": "x"}, {"epoch": 1.5, "loss": 0.5}, {"step": 7, "loss": 0.1}]
    )
    assert steps == [(1, {"epoch": 1.0, "loss": 1.0}), (2, {"epoch": 1.5, "loss": 0.5}), (7, {"loss": 0.1})]


def test_dvc_lock_multi_output_and_absent(tmp_path: Path) -> None:
    cfg = Config()
    assert dvc_lock_hashes(cfg, tmp_path) is None
    (tmp_path / "dvc.lock").write_text(
        "stages:\n  prepare:\n    outs:\n    - {path: artifacts/prepared/train.parquet, md5: a1}\n"
        "    - {path: artifacts/prepared/test.parquet, md5: b2}\n"
        "  train:\n    outs:\n    - {path: artifacts/model, md5: c3}\n",
        encoding="utf-8",
    )
    assert dvc_lock_hashes(cfg, tmp_path) == {
        "prepare": "artifacts/prepared/train.parquet=a1;artifacts/prepared/test.parquet=b2"
    }


def test_prefect_flow_run_id_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    assert prefect_flow_run_id() is None
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "abc-123")
    assert prefect_flow_run_id() == "abc-123"


def test_lineage_facts_outside_a_repo(tmp_path: Path) -> None:
    facts = collect_lineage(Config(), tmp_path)
    assert facts.git is None and facts.data_dvc_md5 is None and facts.dvc_lock is None
    assert set(facts.missing) == {"data_dvc_md5", "dvc_lock", "git"}
    tags = facts.tags()
    assert "textclf.git_commit" not in tags and "textclf.data_dvc_md5" not in tags
    assert tags["textclf.base_model"] == SCRATCH_MODEL


# --------------------------------------------------------------------------- the logged run
def test_store_is_embedded_in_project(project: dict) -> None:
    root, c = project["root"], project["client"]
    assert (root / "mlflow" / "mlflow.db").is_file()
    exp = c.get_experiment(project["logged"].experiment_id)
    assert exp.name == "textclf"
    assert exp.artifact_location == (root / "mlflow" / "artifacts").resolve().as_uri()
    model_id = project["logged"].model_id
    assert (root / "mlflow" / "artifacts" / "models" / model_id).is_dir()
    # configure_mlflow is idempotent: same experiment the second time
    assert configure_mlflow(project["cfg"], root) == exp.experiment_id


def test_params_and_metrics(project: dict) -> None:
    run, c = project["run"], project["client"]
    params = run.data.params
    assert params["train.learning_rate"] == "0.0005"
    assert params["model.architecture.hidden_size"] == str(project["cfg"].model.architecture.hidden_size)
    assert params["prepare.normalize.nfkc"] == "true"
    assert params["data.labels"] == "null"
    assert not any(k.startswith(("paths.", "mlflow.")) for k in params)
    hist = c.get_metric_history(run.info.run_id, "val_macro_f1")
    assert sorted((m.step, m.value) for m in hist) == [(1, 0.55), (2, 0.65)]
    m = run.data.metrics
    assert m["test_macro_f1"] == pytest.approx(0.61)
    assert m["test_accuracy"] == pytest.approx(0.62)
    assert m["baseline_test_macro_f1"] == pytest.approx(0.58)
    assert m["padding_efficiency"] == pytest.approx(0.8)
    assert m["samples_per_s"] == pytest.approx(40.0)
    assert m["wall_time_s"] == pytest.approx(12.5)
    # MLflow 3: the test metrics are also attached to the logged model
    lm = c.get_logged_model(project["logged"].model_id)
    assert {x.key for x in lm.metrics or []} >= {"test_macro_f1", "test_accuracy"}


@pytest.mark.filterwarnings("ignore:The specified dataset source can be interpreted")
def test_dataset_inputs_and_digest_tags(project: dict) -> None:
    run = project["run"]
    inputs = {di.dataset.name: di for di in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    contexts = {n: {t.key: t.value for t in di.tags}["mlflow.data.context"] for n, di in inputs.items()}
    assert contexts == {"train": "train", "val": "validation", "test": "test"}
    for name, di in inputs.items():
        assert json.loads(di.dataset.source) == {"uri": f"artifacts/prepared/{name}.parquet"}
        assert run.data.tags[f"textclf.digest.{name}"] == di.dataset.digest
        expected = mlflow.data.from_pandas(project["splits"][name], source="x", targets="label").digest
        assert di.dataset.digest == expected
    assert len({di.dataset.digest for di in inputs.values()}) == 3
    assert project["logged"].dataset_digests == {n: di.dataset.digest for n, di in inputs.items()}


def test_lineage_tags(project: dict) -> None:
    root, cfg, tags = project["root"], project["cfg"], project["run"].data.tags
    assert tags["textclf.data_dvc_md5"] == DATA_MD5
    assert tags["textclf.dvc_lock.prepare"] == PREPARED_MD5
    assert "textclf.dvc_lock.validate_raw" not in tags  # did not produce the prepared data
    assert tags["textclf.git_commit"] == _git(root, "rev-parse", "HEAD")
    assert tags["textclf.git_dirty"] == "false"
    assert tags["textclf.params_hash"] == params_hash(cfg)
    assert tags["textclf.base_model"] == SCRATCH_MODEL
    assert lineage_tags(cfg, root)["textclf.params_hash"] == params_hash(cfg)
    changed = apply_overrides(cfg, {"train": {"learning_rate": 1e-3}})
    assert params_hash(changed) != params_hash(cfg)


def test_git_dirty_flag(project: dict) -> None:
    root = project["root"]
    (root / "data.dvc").write_text(
        (root / "data.dvc").read_text(encoding="utf-8") + "# edited\n", encoding="utf-8"
    )
    try:
        assert lineage_tags(project["cfg"], root)["textclf.git_dirty"] == "true"
    finally:
        _git(root, "checkout", "--", "data.dvc")


def test_artifacts_logged(project: dict) -> None:
    c, run_id = project["client"], project["logged"].run_id
    top = {a.path for a in c.list_artifacts(run_id)}
    assert "eval" in top
    assert {a.path for a in c.list_artifacts(run_id, "eval")} >= {"eval/metrics.json", "eval/plots"}
    assert [a.path for a in c.list_artifacts(run_id, "eval/plots")] == ["eval/plots/confusion_matrix.png"]
    assert project["run"].data.tags["textclf.missing_artifacts"] == "nope.txt"


def test_pyfunc_predicts_raw_text_like_predictor(project: dict) -> None:
    logged, run = project["logged"], project["run"]
    assert logged.model_uri == f"models:/{logged.model_id}"
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]
    model = mlflow.pyfunc.load_model(logged.model_uri)
    out = model.predict(pd.DataFrame({"text": RAW_TEXTS}))
    assert list(out.columns) == ["label", "prob_negative", "prob_positive"]
    preds = Predictor(project["model_dir"], device="cpu").predict(RAW_TEXTS)
    assert out["label"].tolist() == [p.label for p in preds]
    for lab in LABELS:
        np.testing.assert_allclose(
            out[f"prob_{lab}"], [p.probabilities[lab] for p in preds], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(out[["prob_negative", "prob_positive"]].sum(axis=1), 1.0, rtol=1e-5)
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["text"]
    assert "prob_positive" in sig.outputs.input_names()


def test_lineage_report_complete_for_registered_model(project: dict) -> None:
    cfg, root, c, logged = project["cfg"], project["root"], project["client"], project["logged"]
    configure_mlflow(cfg, root)
    mv = mlflow.register_model(logged.model_uri, "tiny-clf")
    c.set_registered_model_alias("tiny-clf", "champion", mv.version)

    report = lineage_report(f"models:/tiny-clf/{mv.version}", cfg, root)
    text = report.render()
    assert report.complete, text
    assert text.endswith("lineage complete")
    assert "tiny-clf v1 (aliases: @champion)" in text
    assert logged.run_id in text and "FINISHED" in text
    for split in ("train", "val", "test"):
        assert f"digest={logged.dataset_digests[split]}" in text
        assert f"source=artifacts/prepared/{split}.parquet context=" in text
    assert DATA_MD5 in text and PREPARED_MD5 in text
    assert _git(root, "rev-parse", "HEAD") in text

    by_alias = lineage_report("models:/tiny-clf@champion", cfg, root)
    assert by_alias.complete and by_alias.links[0].value == report.links[0].value
    by_run = lineage_report(logged.run_id, cfg, root)
    assert by_run.complete and [x.name for x in by_run.links][0] == "run"
    assert lineage_report(logged.model_uri, cfg, root).complete


def test_lineage_report_names_missing_links(project: dict, tmp_path: Path) -> None:
    """A run logged outside a git repo and without data.dvc or datasets."""
    cfg, root = project["cfg"], project["root"]
    experiment_id = configure_mlflow(cfg, root)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags(lineage_tags(cfg, tmp_path))
    report = lineage_report(run.info.run_id, cfg, root)
    text = report.render()
    assert not report.complete
    assert {x.name for x in report.missing} == {"datasets", "data.dvc md5", "git commit"}
    assert "data.dvc md5" in text and "MISSING (no textclf.data_dvc_md5 tag: data.dvc was absent" in text
    assert text.splitlines()[-1] == "missing links: datasets, data.dvc md5, git commit"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("not-a-ref", "not a run id or model reference"),
        ("models:/only-name", "bad model reference"),
        ("models:/tiny-clf@", "bad model reference"),
        ("models:/no-such-model/1", "registered model 'no-such-model' has no version 1"),
        ("models:/no-such-model@champion", "has no alias @champion"),
        ("0" * 32, "not found"),
    ],
)
def test_bad_refs_give_clear_errors(project: dict, ref: str, message: str) -> None:
    with pytest.raises(TextclfError, match=message):
        lineage_report(ref, project["cfg"], project["root"])

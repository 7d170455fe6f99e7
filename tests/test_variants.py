"""Compressed variants and their parity gate: a variant is served only when it predicts like fp32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from projects import section
from textclf.contracts import PARITY_FILE
from textclf.errors import ModelSourceError
from textclf.evaluate import variants as V
from textclf.model.predictor import Predictor
from train_fixtures import make_frame, tiny_config

CFG = section(
    "evaluate.variants", names=("bf16", "int8", "onnx", "onnx-int8"), latency_texts=20, latency_warmup=2
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    from textclf.train.trainer import train_model

    tmp = tmp_path_factory.mktemp("variants")
    train_model(tiny_config(epochs=4), make_frame(240), make_frame(60, seed=1), tmp / "model", tmp / "ckpt")
    test = make_frame(300, seed=2)
    return tmp / "model", test["text"].tolist(), test["label"].tolist()


def _random_copy(model_dir: Path, out: Path) -> Path:
    """The same architecture, tokenizer and preprocessing with freshly initialized weights."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    shutil.copytree(model_dir, out)
    torch.manual_seed(123)
    AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(out)
    return out


def test_exported_variants_predict_like_fp32(trained, tmp_path: Path) -> None:
    model_dir, texts, gold = trained
    rows = V.score_variants(CFG, model_dir, tmp_path, texts, gold, batch_size=64)

    assert set(rows) == {"torch", "bf16", "int8", "onnx", "onnx-int8"}
    assert rows["torch"]["accuracy"] > 0.9, "the tiny model learned the markers"
    assert rows["onnx"]["agreement"] == 1.0 and rows["onnx"]["accuracy"] == rows["torch"]["accuracy"]
    for name in ("bf16", "int8", "onnx-int8"):
        assert rows[name]["agreement"] >= 0.99, rows[name]
    assert rows["onnx-int8"]["size_mb"] < rows["onnx"]["size_mb"]
    assert rows["bf16"]["size_mb"] < 0.6 * rows["torch"]["size_mb"]  # weights held in bf16
    on_disk = json.loads((tmp_path / PARITY_FILE).read_text())["variants"]
    assert on_disk == json.loads(json.dumps(rows))
    for row in (rows[n] for n in CFG.names):  # passed: every criterion held; else the failed ones are named
        assert row["passed"] == (not V.parity_problems(rows["torch"], row, CFG))


def test_a_broken_variant_is_rejected_and_never_served(trained, tmp_path: Path, monkeypatch) -> None:
    model_dir, texts, gold = trained
    real_export = V.export_onnx
    broken = _random_copy(model_dir, tmp_path / "random")
    monkeypatch.setattr(
        V, "export_onnx", lambda model_dir, out_dir, int8=True: real_export(broken, out_dir, int8)
    )

    rows = V.score_variants(CFG, model_dir, tmp_path / "v", texts, gold, batch_size=64)

    for name in ("onnx", "onnx-int8"):
        assert rows[name]["passed"] is False
        assert rows[name]["agreement"] < 0.9
        assert any(p.startswith("agreement") for p in rows[name]["problems"]), rows[name]["problems"]
    with pytest.raises(ModelSourceError, match="onnx failed the parity gate: agreement"):
        V.resolve_runtime("onnx", rows)
    assert V.resolve_runtime("auto", rows) in {"torch", "bf16", "int8"}


def test_resolve_runtime() -> None:
    rows = {
        "torch": {"speedup": 1.0, "passed": True},
        "int8": {"speedup": 0.7, "passed": False, "problems": ["not faster than fp32 (speedup 0.70)"]},
        "onnx": {"speedup": 1.4, "passed": True},
        "onnx-int8": {"speedup": 2.0, "passed": True},
    }
    assert V.resolve_runtime("auto", rows) == "onnx-int8"
    assert V.resolve_runtime("onnx", rows) == "onnx"
    assert V.resolve_runtime("torch", rows) == "torch"
    assert V.resolve_runtime("auto", {**rows, "onnx-int8": {**rows["onnx-int8"], "passed": False}}) == "onnx"
    assert V.resolve_runtime("auto", {}) == "torch"  # a run without variants
    with pytest.raises(ModelSourceError, match="int8 failed the parity gate: not faster"):
        V.resolve_runtime("int8", rows)
    with pytest.raises(ModelSourceError, match="no such variant"):
        V.resolve_runtime("onnx", {})


def test_predictor_runs_the_runtime_its_directory_names(trained, tmp_path: Path) -> None:
    model_dir, texts, _ = trained
    served = tmp_path / "served"
    shutil.copytree(model_dir, served)
    V.export_onnx(model_dir, served)
    (served / "textclf_runtime.json").write_text(json.dumps({"runtime": "onnx-int8", "parity": {}}))
    assert Predictor(model_dir).runtime == "torch"
    predictor = Predictor(served)
    assert predictor.runtime == "onnx-int8" and predictor.encoder.model is None
    assert [p.label for p in predictor.predict(texts[:5])] == [
        p.label for p in Predictor(model_dir).predict(texts[:5])
    ]
    with pytest.raises(ModelSourceError, match="ONNX model not found"):
        Predictor(model_dir, runtime="onnx")

"""Drift measures and the record store, on generated data (no servers)."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from textclf.config import Config, TokenizerConfig  # noqa: E402
from textclf.contracts import now  # noqa: E402
from textclf.drift import label_js, measure_drift, ngram_js, psi  # noqa: E402
from textclf.model.tokenizer import build_char_tokenizer  # noqa: E402
from textclf.serving.records import TRAFFIC, Recorder, read_records  # noqa: E402
from train_fixtures import make_frame  # noqa: E402

LABELS = ["neg", "pos"]


def _records(frame: pd.DataFrame, rng: np.random.Generator, confidence: float = 0.9) -> list[dict]:
    return [
        {
            "ts": now(),
            "model": "textclf-model:x",
            "text": t,
            "length": len(t),
            "label": lab,
            "confidence": float(np.clip(rng.normal(confidence, 0.05), 0.5, 1.0)),
        }
        for t, lab in zip(frame["text"], frame["label"], strict=True)
    ]


@pytest.fixture(scope="module")
def material() -> dict:
    rng = np.random.default_rng(0)
    train = make_frame(600, seed=1)
    reference = make_frame(200, seed=2).rename(columns={"label": "predicted"})
    reference["confidence"] = np.clip(rng.normal(0.9, 0.05, len(reference)), 0.5, 1.0)
    tokenizer = build_char_tokenizer(train["text"], TokenizerConfig(min_frequency=1), 64)
    return {"train": train, "reference": reference, "tokenizer": tokenizer, "rng": rng}


def test_replayed_in_distribution_traffic_is_not_drift(material: dict) -> None:
    replay = _records(make_frame(300, seed=3), material["rng"])
    values, drifted = measure_drift(
        replay, material["train"], material["reference"], material["tokenizer"], LABELS, Config()
    )
    assert drifted == [], values
    assert (
        values["length_psi"] < 0.1 and values["ngram_js"] < 0.05 and abs(values["unk_rate_increase"]) < 0.01
    )


def test_shifted_traffic_is_drift(material: dict) -> None:
    rng = random.Random(0)
    news = [
        "".join(
            rng.choice("国家主席会议经济发展改革开放人民政府工作报告全面推进")
            for _ in range(rng.randint(20, 60))
        )
        for _ in range(300)
    ]
    shifted = pd.DataFrame({"text": news, "label": ["neg"] * 250 + ["pos"] * 50})
    values, drifted = measure_drift(
        _records(shifted, material["rng"], confidence=0.6),
        material["train"],
        material["reference"],
        material["tokenizer"],
        LABELS,
        Config(),
    )
    assert {"length_psi", "ngram_js", "unk_rate_increase", "predicted_class_js", "confidence_drop"} <= set(
        drifted
    ), values


def test_hashed_texts_measure_what_they_can(material: dict) -> None:
    records = [
        {k: v for k, v in r.items() if k != "text"}
        for r in _records(make_frame(100, seed=4), material["rng"])
    ]
    values, _ = measure_drift(
        records, material["train"], material["reference"], material["tokenizer"], LABELS, Config()
    )
    assert (
        values["ngram_js"] is None
        and values["unk_rate_increase"] is None
        and values["length_psi"] is not None
    )


def test_measures_are_zero_for_identical_distributions() -> None:
    x = list(np.random.default_rng(1).integers(1, 100, 1000))
    assert psi(x, x) == pytest.approx(0.0, abs=1e-9)
    assert ngram_js(["好评好评", "差评"], ["好评好评", "差评"]) == pytest.approx(0.0, abs=1e-9)
    assert label_js(["a", "b"], ["a", "b"], ["a", "b"]) == pytest.approx(0.0, abs=1e-9)
    assert label_js(["a"] * 10, ["b"] * 10, ["a", "b"]) > 0.9


def test_recorder_writes_every_record_and_reads_them_back(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, TRAFFIC, queue_size=10_000, rotate_bytes=2_000)
    for i in range(500):
        assert rec.record({"ts": now(), "text": f"评论{i}", "i": i})
        if i % 100 == 99:
            rec.queue.join()  # written: the next batch goes to a new part once this one is over 2 kB
    got = list(read_records(tmp_path, TRAFFIC))
    assert [r["i"] for r in sorted(got, key=lambda r: r["i"])] == list(range(500)) and rec.dropped == 0
    parts = list((tmp_path / TRAFFIC).glob("date=*/part-*.jsonl"))
    assert len(parts) > 1  # rotated by size
    assert list(read_records(tmp_path, TRAFFIC, since="2999-01-01")) == []


def test_recorder_never_raises_when_the_disk_fails(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder should be")
    rec = Recorder(blocked, TRAFFIC, queue_size=10, rotate_bytes=1_000)
    accepted = sum(rec.record({"ts": now(), "i": i}) for i in range(50))
    deadline = time.monotonic() + 10
    while rec.dropped < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rec.dropped == 50 and rec.written == 0 and accepted <= 50  # full queue or failed writes: counted


def test_drift_starts_training_in_the_deployments_own_checkout(
    tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor passes no project_dir of its own: a pool worker runs in its clone, a served
    deployment in the project its parameters name (Prefect merges the deployment's parameters)."""
    import types

    from prefect.flows import load_flow_from_entrypoint

    fn = load_flow_from_entrypoint(f"{repo_root / 'flows' / 'monitor.py'}:monitor_flow").fn
    report = types.SimpleNamespace(drifted=True, summary="psi 0.9", markdown=lambda: "# drift")
    started: list[tuple[str, dict]] = []

    def run_deployment(name: str, parameters: dict, timeout: float) -> object:
        started.append((name, parameters))
        return types.SimpleNamespace(id="run-1")

    for name, value in {
        "configure_environment": lambda root: None,
        "load_config": lambda path: Config(),
        "monitor": lambda cfg, root, since: report,
        "create_markdown_artifact": lambda *a, **k: None,
        "get_run_logger": lambda: __import__("logging").getLogger("monitor-test"),
        "run_deployment": run_deployment,
    }.items():
        monkeypatch.setitem(fn.__globals__, name, value)
    out = fn(project_dir=str(tmp_path), params="params.yaml")
    assert out["training_flow_run"] == "run-1"
    assert started == [
        (
            Config().monitor.training_deployment,
            {"reason": "drift: psi 0.9", "import_feedback": True, "params": "params.yaml"},
        )
    ]

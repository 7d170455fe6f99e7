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

from projects import params, section  # noqa: E402
from textclf.contracts import now  # noqa: E402
from textclf.data.records import TRAFFIC, Recorder, read_records  # noqa: E402
from textclf.drift import label_js, measure_drift, ngram_js, psi  # noqa: E402
from textclf.model.tokenizer import build_char_tokenizer  # noqa: E402
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
    tokenizer = build_char_tokenizer(train["text"], section("model.tokenizer", min_frequency=1), 64)
    return {"train": train, "reference": reference, "tokenizer": tokenizer, "rng": rng}


def test_replayed_in_distribution_traffic_is_not_drift(material: dict) -> None:
    replay = _records(make_frame(300, seed=3), material["rng"])
    values, drifted = measure_drift(
        replay, material["train"], material["reference"], material["tokenizer"], LABELS, params().monitor
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
        params().monitor,
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
        records, material["train"], material["reference"], material["tokenizer"], LABELS, params().monitor
    )
    assert (
        values["ngram_js"] is None
        and values["unk_rate_increase"] is None
        and values["length_psi"] is not None
    )


def test_measures_are_zero_for_identical_distributions() -> None:
    x = list(np.random.default_rng(1).integers(1, 100, 1000))
    assert psi(x, x, 10) == pytest.approx(0.0, abs=1e-9)
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


def _part(folder: Path, name: str = "part-a-1-x-0000.jsonl") -> Path:
    path = folder / TRAFFIC / "date=2026-01-01" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _lines(folder: Path) -> list[bytes]:
    return [line for p in sorted(folder.rglob("*.jsonl")) for line in p.read_bytes().splitlines()]


def test_torn_and_undecodable_lines_are_skipped_and_counted(
    material: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from textclf import drift as M

    ok = _records(make_frame(2, seed=5), material["rng"])
    good = [json.dumps(r, ensure_ascii=False).encode() for r in ok]
    _part(tmp_path).write_bytes(good[0] + b"\n" + good[1][:25] + b"\n" + good[1] + b"\n")
    _part(tmp_path, "part-b-2-y-0000.jsonl").write_bytes(b'{"ts": "2026-01-01", "text": "\xff\xfe"}\n')
    bad: list[str] = []
    assert [r["text"] for r in read_records(tmp_path, TRAFFIC, bad=bad)] == [ok[0]["text"], ok[1]["text"]]
    assert len(bad) == 2 and bad[0].endswith("part-a-1-x-0000.jsonl:2")

    # textclf monitor on that folder: judged on the 2 good records, the 2 bad lines in its report.
    monkeypatch.setenv("TEXTCLF_MONITORING_DIR", str(tmp_path))
    monkeypatch.setattr(
        M,
        "_champion_material",
        lambda *a: ("1", "run", material["train"], material["reference"], material["tokenizer"], LABELS),
    )
    monkeypatch.setattr(M, "_log_run", lambda *a: None)
    report = M.monitor(params({"monitor": {"min_records": 2}}), tmp_path / "project")
    assert report.n == 2 and report.bad_lines == 2 and report.values
    saved = json.loads((tmp_path / "project" / "artifacts/reports/monitoring/report.json").read_text())
    assert saved["bad_lines"] == 2 and "2 unreadable record lines skipped" in report.markdown()


def test_a_lone_surrogate_does_not_fail_its_batch(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, TRAFFIC, queue_size=100, rotate_bytes=2**20)
    for text in ("好评", "a\ud800", "差评"):
        rec.record({"ts": now(), "text": text})
    rec.close()
    assert rec.written == 3 and rec.dropped == 0
    bad: list[str] = []
    assert [r["text"] for r in read_records(tmp_path, TRAFFIC, bad=bad)] == ["好评", "a\ud800", "差评"]
    assert bad == [] and len(_lines(tmp_path)) == 3


def test_a_write_failing_half_way_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import io

    class HalfWrite(io.FileIO):
        def write(self, data: bytes) -> int:
            super().write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    rec = Recorder(tmp_path, TRAFFIC, queue_size=100, rotate_bytes=2**20)
    batch = lambda tag: [{"ts": now(), "text": f"{tag}{i}" * 20} for i in range(50)]  # noqa: E731
    for item in batch("a"):
        rec.record(item)
    rec.queue.join()
    with monkeypatch.context() as m:  # the disk fills up in the middle of the second batch
        m.setattr(Path, "open", lambda self, mode="r", buffering=-1: HalfWrite(self, mode.replace("b", "")))
        for item in batch("b"):
            rec.record(item)
        rec.queue.join()
    assert rec.written == 50 and rec.dropped == 50
    for item in batch("c"):  # space again: the next batch is written
        rec.record(item)
    rec.close()
    bad: list[str] = []
    texts = [r["text"][:2] for r in read_records(tmp_path, TRAFFIC, bad=bad)]
    assert bad == [] and texts == [f"a{i}"[:2] for i in range(50)] + [f"c{i}"[:2] for i in range(50)]
    assert all(line.endswith(b"}") for line in _lines(tmp_path)) and len(_lines(tmp_path)) == 100


def test_retention_removes_parts_by_age_then_by_total_size(tmp_path: Path) -> None:
    import os

    from textclf.data.records import PartWriter, remove_old_parts

    day = 86400
    for i, age_days in enumerate([40, 31, 3, 2, 1]):  # 1000 bytes each
        path = _part(tmp_path, f"part-h-1-r-{i:04d}.jsonl")
        path.write_bytes(b"x" * 999 + b"\n")
        os.utime(path, (time.time() - age_days * day,) * 2)
    names = lambda: sorted(p.name[-9:-6] for p in (tmp_path / TRAFFIC).rglob("*.jsonl"))  # noqa: E731
    assert remove_old_parts(tmp_path / TRAFFIC, retention_days=30, max_total_mb=None) == 2
    assert names() == ["002", "003", "004"]
    # 3000 bytes over a 2100-byte cap: the oldest goes.
    assert remove_old_parts(tmp_path / TRAFFIC, retention_days=30, max_total_mb=2100 / 2**20) == 1
    assert names() == ["003", "004"]
    # A writer applies the policy when it starts (and at each rotation).
    PartWriter(tmp_path, TRAFFIC, rotate_bytes=2**20, retention_days=1.5, max_total_mb=None)
    assert names() == ["004"]


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
        "load_config": lambda path: params(),
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
            params().monitor.training_deployment,
            {"reason": "drift: psi 0.9", "import_feedback": True, "params": "params.yaml"},
        )
    ]

"""`dvc repro` on a temporary copy of the project with a small generated corpus (real DVC, real git)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from projects import BIN, TINY, make_project, run, toy_corpus
from textclf.data.io import write_csv

pytestmark = pytest.mark.integration


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(cmd, cwd, check)


def small_corpus() -> pd.DataFrame:
    return toy_corpus()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    proj = make_project(tmp_path_factory.mktemp("dvc"), repo_root, small_corpus(), TINY)
    _run([str(BIN / "dvc"), "repro"], proj)
    return proj


def test_repro_produces_disjoint_splits_and_noop_rerun(project: Path) -> None:
    prepared = project / "artifacts" / "prepared"
    splits = {s: pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "val", "test")}
    texts = [set(df["text"]) for df in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    manifest = yaml.safe_load((prepared / "manifest.json").read_text())
    assert manifest["rows_out"] == sum(len(df) for df in splits.values()) == 300
    assert manifest["dropped"]["label_conflict"] == 2
    assert (project / "artifacts" / "reports" / "raw" / "summary.json").is_file()
    assert (project / "artifacts" / "reports" / "prepared" / "summary.json").is_file()
    assert (project / "dvc.lock").is_file()
    metrics = json.loads((project / "artifacts" / "eval" / "metrics.json").read_text())
    assert {"transformer", "baseline"} <= metrics.keys()
    assert 0.0 <= metrics["transformer"]["accuracy"] <= 1.0
    shown = _run([str(BIN / "dvc"), "metrics", "show"], project).stdout
    assert "transformer.accuracy" in shown and "baseline.accuracy" in shown

    start = time.monotonic()
    out = _run([str(BIN / "dvc"), "repro"], project)
    assert time.monotonic() - start < 5, "a no-op repro must take under 5 s"
    assert "didn't change" in out.stdout or "up to date" in out.stdout
    status = _run([str(BIN / "dvc"), "status"], project)
    assert "up to date" in status.stdout
    dag = _run([str(BIN / "dvc"), "dag", "--md"], project)
    assert "validate_raw" in dag.stdout and "validate_prepared" in dag.stdout


def _corrupt(project: Path, tmp_path: Path, mutate) -> subprocess.CompletedProcess[str]:
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, symlinks=True)
    raw = copy / "data" / "reviews.csv"
    mutate(raw)
    before = (copy / "artifacts" / "prepared" / "train.parquet").stat().st_mtime_ns
    proc = _run([str(BIN / "dvc"), "repro"], copy, check=False)
    after = (copy / "artifacts" / "prepared" / "train.parquet").stat().st_mtime_ns
    assert proc.returncode != 0, proc.stdout
    assert before == after, "prepare must not run after a failed validation"
    assert "validate_raw" in proc.stdout + proc.stderr
    return proc


def _rewrite(raw: Path, fn) -> None:
    frame = pd.read_csv(raw, dtype=str, keep_default_na=False)
    write_csv(fn(frame), raw)


@pytest.mark.parametrize(
    ("name", "mutate", "reason"),
    [
        (
            "unknown_label",
            lambda p: _rewrite(p, lambda f: f.assign(label=f["label"].where(f.index != 5, "neutral"))),
            "label_in_set",
        ),
        (
            "empty_texts",
            lambda p: _rewrite(p, lambda f: f.assign(text=f["text"].where(f.index % 10 != 0, ""))),
            "text_not_blank",
        ),
        (
            "missing_column",
            lambda p: _rewrite(p, lambda f: f.rename(columns={"label": "sentiment"})),
            "columns_present",
        ),
        (
            "non_utf8",
            lambda p: p.write_bytes(p.read_bytes().replace("质量".encode(), b"\xff\xfe", 40)),
            "text_utf8",
        ),
        (
            "truncated",
            lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2 + 7]),
            "label_in_set",
        ),
    ],
)
def test_corrupt_raw_stops_at_validation(
    project: Path, tmp_path: Path, name: str, mutate, reason: str
) -> None:
    proc = _corrupt(project, tmp_path, mutate)
    assert reason in proc.stdout + proc.stderr, (name, proc.stdout[-2000:], proc.stderr[-2000:])

"""`dvc repro` on a temporary copy of the project with a small generated corpus (real DVC, real git)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from textclf.data.io import write_csv

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return env


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def small_corpus(n_per_class: int = 150) -> pd.DataFrame:
    rows = []
    for i in range(n_per_class):
        rows.append((f"质量很好，第{i}次购买，非常满意", "positive"))
        rows.append((f"太差了，第{i}次买到坏的，不满意", "negative"))
    rows += rows[:40]  # exact duplicates, as in the real corpus
    rows.append(("两种标签都有", "positive"))
    rows.append(("两种标签都有", "negative"))
    return pd.DataFrame(rows, columns=["text", "label"])


def make_project(root: Path, repo_root: Path, frame: pd.DataFrame) -> Path:
    proj = root / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(repo_root / name, proj / name)
    shutil.copytree(repo_root / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["validation"]["raw"]["min_rows"] = 100
    (proj / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    _run(["git", "init", "-q"], proj)
    _run([str(BIN / "dvc"), "init", "-q"], proj)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], proj)
    _run([str(BIN / "dvc"), "config", "core.site_cache_dir", str(root / "dvc-site")], proj)
    write_csv(frame, proj / "data" / "reviews.csv")
    _run([str(BIN / "dvc"), "add", "-q", "data"], proj)
    _run(["git", "add", "-A"], proj)
    _run(["git", "commit", "-qm", "init"], proj)
    return proj


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    proj = make_project(tmp_path_factory.mktemp("dvc"), repo_root, small_corpus())
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

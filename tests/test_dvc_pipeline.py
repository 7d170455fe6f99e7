"""`dvc repro` on a temporary copy of the project with a small generated corpus (real DVC, real git)."""

from __future__ import annotations

import json
import shutil
import subprocess
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
    predictions = pd.read_parquet(project / "artifacts" / "eval" / "predictions.parquet")
    assert len(predictions) == len(splits["test"])  # scored on the whole test split, nothing else
    assert metrics["transformer"]["accuracy"] == pytest.approx(predictions["correct"].mean())
    shown = _run([str(BIN / "dvc"), "metrics", "show"], project).stdout
    assert "transformer.accuracy" in shown and "baseline.accuracy" in shown

    out = _run([str(BIN / "dvc"), "repro"], project)  # a no-op: no stage runs again
    assert "didn't change" in out.stdout or "up to date" in out.stdout
    assert "Running stage" not in out.stdout, out.stdout
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


# --------------------------------------------------------------------------- DVC is the change detector
def _imports(module: str, src: Path, seen: set[str]) -> set[str]:
    """Every textclf module ``module`` imports, at the top or inside functions, transitively."""
    import ast

    if module in seen:
        return seen
    seen.add(module)
    path = src / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("textclf") and (
                (src / Path(*name.split("."))).is_dir()
                or (src / Path(*name.split("."))).with_suffix(".py").is_file()
            ):
                _imports(name, src, seen)
    return seen


def _stage_entry_imports(stage: str, src: Path) -> set[Path]:
    """Files of the modules that textclf.stages.run_<stage> imports (its own body and module level)."""
    import ast

    tree = ast.parse((src / "textclf" / "stages.py").read_text(encoding="utf-8"))
    body = [n for n in tree.body if not isinstance(n, ast.FunctionDef)]
    body += [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == f"run_{stage}"]
    seen: set[str] = {"textclf.stages"}
    for node in (x for part in body for x in ast.walk(part)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("textclf"):
            for name in [node.module] + [f"{node.module}.{a.name}" for a in node.names]:
                p = src / Path(*name.split("."))
                if p.is_dir() or p.with_suffix(".py").is_file():
                    _imports(name, src, seen)
    files = set()
    for module in seen:
        p = src / Path(*module.split("."))
        files.add(p / "__init__.py" if p.is_dir() else p.with_suffix(".py"))
    return files


@pytest.mark.parametrize("stage", ["validate_raw", "prepare", "validate_prepared", "train", "evaluate"])
def test_stage_deps_cover_every_module_the_stage_imports(repo_root: Path, stage: str) -> None:
    spec = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"][stage]
    deps = [repo_root / d for d in spec["deps"] if d.startswith("src/")]
    entry = "validate_raw" if stage == "validate_raw" else stage
    files = _stage_entry_imports(
        entry if stage != "validate_prepared" else "validate_prepared", repo_root / "src"
    )
    uncovered = sorted(
        str(f.relative_to(repo_root))
        for f in files
        if f.name != "__init__.py" or f.parent.name == "textclf"
        if not any(f == d or d in f.parents for d in deps) and f.name != "__init__.py"
    )
    assert not uncovered, f"{stage} imports modules that are not among its DVC deps: {uncovered}"


def test_code_change_reruns_evaluate_comment_change_retrains_nothing(project: Path) -> None:
    from textclf import repro

    assert repro.changed(project) == []
    params = project / "params.yaml"
    params.write_text("# a comment that changes no value\n" + params.read_text())
    assert repro.changed(project) == []  # DVC compares param values, not bytes
    assert not any(repro.reproduce(project, s) for s in repro.stage_names(project))

    plots = project / "src" / "textclf" / "evaluate" / "plots.py"
    plots.write_text(plots.read_text() + "\n# a change in a module evaluate imports\n")
    assert repro.changed(project) == ["evaluate"]
    ran = {s: repro.reproduce(project, s) for s in repro.stage_names(project)}
    assert ran == {
        "validate_raw": False,
        "prepare": False,
        "validate_prepared": False,
        "train": False,
        "evaluate": True,
    }
    assert repro.changed(project) == []


# --------------------------------------------------------------------------- feedback import
@pytest.fixture
def feedback_project(tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEXTCLF_MONITORING_DIR", str(tmp_path / "monitoring"))
    return make_project(tmp_path, repo_root, small_corpus())


def _feedback(folder: Path, ts: str, text: str, part: str) -> str:
    """One feedback record in its own part file, as the service writes it."""
    import uuid

    from textclf.data.records import FEEDBACK, PartWriter

    item = {"id": uuid.uuid4().hex, "ts": ts, "text": text, "label": "positive", "model_version": "m:1"}
    writer = PartWriter(folder, FEEDBACK, rotate_bytes=2**20)
    writer.prefix = part
    writer.write([item], fsync=True)
    return item["id"]


def test_feedback_import_by_id_takes_late_records_and_never_twice(feedback_project: Path) -> None:
    from textclf.config import load_config
    from textclf.data.feedback import import_feedback

    cfg, folder = load_config(feedback_project / "params.yaml"), feedback_project.parent / "monitoring"
    first = _feedback(folder, "2026-01-02T10:00:00.000+00:00", "物流很快，好评", "part-a")
    part = folder / "feedback" / "date=2026-01-02" / "part-a-0000.jsonl"
    part.write_bytes(part.read_bytes() + b'{"id": "torn", "ts": "2026-01-02T10:')  # a killed writer's tail
    md5 = (feedback_project / "data.dvc").read_text()
    # The documented command.
    out = run([str(BIN / "python"), "-m", "textclf", "data", "import", "--feedback"], feedback_project)
    assert "1 feedback rows added" in out.stdout
    assert (feedback_project / "data.dvc").read_text() != md5
    # Another replica's record, older than the one imported, reaches the store after the import.
    late = _feedback(folder, "2026-01-02T09:00:00.000+00:00", "包装破损，但客服解决了", "part-b")
    assert import_feedback(cfg, feedback_project, dvc=True) == 1
    assert import_feedback(cfg, feedback_project, dvc=True) == 0
    rows = pd.read_csv(feedback_project / cfg.paths.feedback, dtype=str)
    assert rows["id"].tolist() == [first, late] and list(rows.columns[:3]) == ["id", "text", "label"]
    assert set(rows["review"]) == {"pending"}


def test_feedback_review_commands(feedback_project: Path) -> None:
    folder, csv = feedback_project.parent / "monitoring", feedback_project / "data" / "feedback.csv"
    ids = [
        _feedback(folder, f"2026-01-02T1{i}:00:00.000+00:00", f"第{i}条反馈", f"part-{i}") for i in range(3)
    ]
    textclf = [str(BIN / "python"), "-m", "textclf"]
    run([*textclf, "data", "import", "--feedback"], feedback_project)
    assert "3 rows" in run([*textclf, "feedback", "list", "--status", "pending"], feedback_project).stdout
    md5 = (feedback_project / "data.dvc").read_text()
    assert (
        "1 feedback rows approved" in run([*textclf, "feedback", "approve", ids[0]], feedback_project).stdout
    )
    assert (feedback_project / "data.dvc").read_text() != md5  # the review is a new data version
    assert (
        "1 feedback rows rejected" in run([*textclf, "feedback", "reject", ids[1]], feedback_project).stdout
    )
    run([*textclf, "feedback", "approve", "--all-pending"], feedback_project)
    assert pd.read_csv(csv)["review"].tolist() == ["approved", "rejected", "approved"]
    unknown = run([*textclf, "feedback", "approve", "nope"], feedback_project, check=False)
    assert unknown.returncode == 3 and "no feedback with id" in unknown.stderr


def test_feedback_import_interrupted_is_completed_by_the_rerun(
    feedback_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dvc.repo import Repo

    from textclf.config import load_config
    from textclf.data.feedback import import_feedback

    cfg, folder = load_config(feedback_project / "params.yaml"), feedback_project.parent / "monitoring"
    csv = feedback_project / cfg.paths.feedback
    _feedback(folder, "2026-01-02T10:00:00.000+00:00", "物流很快，好评", "part-a")
    assert import_feedback(cfg, feedback_project, dvc=True) == 1
    before, md5 = csv.read_bytes(), (feedback_project / "data.dvc").read_text()
    _feedback(folder, "2026-01-02T11:00:00.000+00:00", "质量一般，价格偏贵", "part-b")

    def torn_write(frame: pd.DataFrame, fh, **kwargs) -> None:  # noqa: ANN001
        fh.write(frame.to_string()[:40])
        raise OSError("killed in the middle of the write")

    with monkeypatch.context() as m:  # a crash while the new file is written: the old one is intact
        m.setattr(pd.DataFrame, "to_csv", torn_write)
        with pytest.raises(OSError, match="killed"):
            import_feedback(cfg, feedback_project, dvc=True)
    assert csv.read_bytes() == before and not list(csv.parent.glob(".*.tmp"))

    def crash(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise RuntimeError("killed before dvc add")

    with monkeypatch.context() as m:  # a crash after the file is replaced, before dvc add
        m.setattr(Repo, "add", crash)
        with pytest.raises(RuntimeError, match="killed"):
            import_feedback(cfg, feedback_project, dvc=True)
    assert len(pd.read_csv(csv)) == 2 and (feedback_project / "data.dvc").read_text() == md5
    # The rerun adds nothing new but records the data version the crash left unrecorded.
    assert import_feedback(cfg, feedback_project, dvc=True) == 0
    assert (feedback_project / "data.dvc").read_text() != md5
    status = run([str(BIN / "dvc"), "status", "data.dvc"], feedback_project).stdout
    assert "changed" not in status, status


def test_committed_lock_matches_the_code_and_params(repo_root: Path) -> None:
    """dvc.lock is regenerated in the commit that changes a stage's code or params (`make run`, then
    commit dvc.lock): otherwise a fresh clone's first run rewrites every stage's deps."""
    from contextlib import chdir

    from dvc.repo import Repo

    with chdir(repo_root), Repo(str(repo_root)) as repo:
        status = repo.status()
    stale = sorted(
        f"{stage}: {path}"
        for stage, entries in status.items()
        for entry in entries
        if isinstance(entry, dict)
        for path, what in entry.get("changed deps", {}).items()
        if path.startswith(("src/", "flows/")) or path.endswith("params.yaml")
    )
    assert not stale, "dvc.lock is stale (rerun `make run` and commit dvc.lock): " + ", ".join(stale)

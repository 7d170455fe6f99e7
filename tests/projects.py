"""Throw-away copies of the project (real git + DVC repos) for integration tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from textclf.config import Config, _deep_merge, load_config
from textclf.data.io import write_csv

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", ".gitignore", ".dvcignore", "bentofile.yaml")
PROJECT_DIRS = ("src", "flows")

# A model and gate small enough to train, judge and package in seconds on toy data.
TINY = {
    "validation": {"raw": {"min_rows": 100}},
    "model": {
        "pretrained": None,  # the from-scratch char-BERT
        "max_length": 32,
        "architecture": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "tokenizer": {"min_frequency": 1},
    },
    "train": {
        "epochs": 3,
        "batch_size": 16,
        "learning_rate": 0.003,
        "checkpoint_steps": 5,
        "logging_steps": 5,
        "early_stopping_patience": 0,
        "num_threads": 1,
    },
    "gate": {
        "min_accuracy": 0.6,
        "min_macro_f1": 0.6,
        "min_class_recall": 0.3,
        "baseline": "off",
        "min_slice_size": 1000,
        "latency_texts": 10,
        "max_latency_p95_ms": 2000,  # the machine is shared with other tests: no timing flakes
        "behaviour": {"enabled": False},
    },
    "serve": {"max_batch_size": 8},
    "flow": {"default_task": {"retries": 1, "retry_delay_seconds": 0, "timeout_seconds": 600}},
}


def params(overrides: dict[str, Any] | None = None) -> Config:
    """The repository's params.yaml (the only source of a setting), with nested overrides."""
    return load_config(REPO / "params.yaml", overrides)


def section(dotted: str, **fields: Any) -> Any:
    """One sub-config of params.yaml with some fields changed, e.g. ``section("serve", auth="none")``."""
    parts = dotted.split(".")
    overrides: dict[str, Any] = fields
    for part in reversed(parts):
        overrides = {part: overrides}
    node: Any = params(overrides)
    for part in parts:
        node = getattr(node, part)
    return node


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PATH"] = f"{BIN}{os.pathsep}{out['PATH']}"
    out.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return out


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def toy_corpus(n_per_class: int = 150) -> pd.DataFrame:
    """Separable Chinese reviews with the raw corpus' flaws: duplicates and one label conflict."""
    rows = []
    for i in range(n_per_class):
        rows.append((f"质量很好，第{i}次购买，非常满意", "positive"))
        rows.append((f"太差了，第{i}次买到坏的，很失望", "negative"))
    rows += rows[:40]
    rows.append(("两种标签都有", "positive"))
    rows.append(("两种标签都有", "negative"))
    return pd.DataFrame(rows, columns=["text", "label"])


def write_params(proj: Path, repo_root: Path, overrides: dict[str, Any]) -> None:
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    merged = _deep_merge(params, overrides)
    (proj / "params.yaml").write_text(yaml.safe_dump(merged, allow_unicode=True, sort_keys=False))


def make_project(
    root: Path, repo_root: Path, frame: pd.DataFrame, overrides: dict[str, Any] | None = None
) -> Path:
    proj = root / "proj"
    proj.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy(repo_root / name, proj / name)
    for name in PROJECT_DIRS:
        shutil.copytree(repo_root / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    write_params(
        proj, repo_root, overrides if overrides is not None else {"validation": {"raw": {"min_rows": 100}}}
    )
    run(["git", "init", "-q"], proj)
    run([str(BIN / "dvc"), "init", "-q"], proj)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], proj)
    run([str(BIN / "dvc"), "config", "core.site_cache_dir", str(root / "dvc-site")], proj)
    write_csv(frame, proj / "data" / "reviews.csv")
    run([str(BIN / "dvc"), "add", "-q", "data"], proj)
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-qm", "init"], proj)
    return proj


def wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    """``check()``'s first truthy result, polled every 2 s; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


class Webhook(BaseHTTPRequestHandler):
    """A loopback webhook receiver for notification tests: the JSON bodies it got, in order."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        Webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass

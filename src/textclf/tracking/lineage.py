"""Lineage facts recorded on every training run as ``textclf.*`` tags.

Each fact is a small function that returns ``None`` when its source is absent (no ``data.dvc``, not a
git repository, not inside a Prefect flow...); the lineage report then names the missing link instead
of failing. Dataset content digests are recorded separately by the run logger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from textclf.config import Config

log = logging.getLogger(__name__)

TAG_PREFIX = "textclf."
TAG_DATA_DVC_MD5 = "textclf.data_dvc_md5"
TAG_DVC_LOCK_PREFIX = "textclf.dvc_lock."
TAG_GIT_COMMIT = "textclf.git_commit"
TAG_GIT_DIRTY = "textclf.git_dirty"
TAG_PARAMS_HASH = "textclf.params_hash"
TAG_BASE_MODEL = "textclf.base_model"
TAG_BASE_MODEL_REVISION = "textclf.base_model_revision"
TAG_PREFECT_FLOW_RUN_ID = "textclf.prefect_flow_run_id"
TAG_DIGEST_PREFIX = "textclf.digest."

SCRATCH_MODEL = "scratch:char-bert"
GIT_TIMEOUT_S = 10


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        log.warning("cannot read %s: %s", path, err)
        return None


def data_dvc_md5(cfg: Config, root: Path) -> str | None:
    """md5 of the raw data folder as recorded by ``dvc add`` in ``<paths.data_dir>.dvc``."""
    raw = _read_yaml(Path(root) / f"{cfg.paths.data_dir}.dvc")
    try:
        md5 = raw["outs"][0]["md5"]
    except (TypeError, KeyError, IndexError):
        return None
    return str(md5) if md5 else None


def _overlaps(a: PurePosixPath, b: PurePosixPath) -> bool:
    return a == b or a in b.parents or b in a.parents


def dvc_lock_hashes(cfg: Config, root: Path) -> dict[str, str] | None:
    """Output hashes from ``dvc.lock`` of the stages that produced the prepared data.

    A stage counts when one of its outputs overlaps ``paths.prepared``. The value is the md5 for a
    single output, else ``path=md5`` pairs joined by ``;``.
    """
    raw = _read_yaml(Path(root) / "dvc.lock")
    stages = raw.get("stages") if isinstance(raw, dict) else None
    if not isinstance(stages, dict):
        return None
    target = PurePosixPath(cfg.paths.prepared.as_posix())
    out: dict[str, str] = {}
    for stage, body in stages.items():
        outs = [o for o in (body or {}).get("outs") or [] if isinstance(o, dict) and o.get("path")]
        if not any(_overlaps(PurePosixPath(str(o["path"])), target) for o in outs):
            continue
        pairs = [(str(o["path"]), str(o.get("md5") or o.get("etag") or "")) for o in outs]
        out[str(stage)] = pairs[0][1] if len(pairs) == 1 else ";".join(f"{p}={h}" for p, h in pairs)
    return out or None


@dataclass(frozen=True)
class GitState:
    commit: str
    dirty: bool


def git_state(root: Path) -> GitState | None:
    """HEAD commit and whether the working tree differs from it; None outside a repo or before a commit."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            log.debug("git %s failed: %s", args, err)
            return None
        return res.stdout if res.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    if not commit:
        return None
    # Untracked (not ignored) files count: the commit alone would not reproduce the run.
    status = git("status", "--porcelain")
    return GitState(commit=commit.strip(), dirty=bool(status and status.strip()))


def params_hash(cfg: Config) -> str:
    """sha256 of the effective configuration as canonical JSON."""
    canonical = json.dumps(
        cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def base_model(cfg: Config) -> tuple[str, str | None]:
    """The starting point of training: a hub id / local path and its revision, or the scratch model."""
    return (cfg.model.pretrained or SCRATCH_MODEL, cfg.model.revision)


def prefect_flow_run_id() -> str | None:
    """The enclosing Prefect flow run, if any.

    Prefect is consulted only when already imported (a flow is running in this process), since
    importing it just to ask would start its machinery; otherwise the env var Prefect sets for
    flow-run subprocesses is used.
    """
    if "prefect" in sys.modules:
        try:
            from prefect.runtime import flow_run

            run_id = flow_run.id
        except Exception as err:  # noqa: BLE001 - lineage must never break a training run
            log.debug("cannot read Prefect flow run id: %s", err)
            run_id = None
        if run_id:
            return str(run_id)
    return os.environ.get("PREFECT__FLOW_RUN_ID") or None


@dataclass(frozen=True)
class LineageFacts:
    data_dvc_md5: str | None
    dvc_lock: dict[str, str] | None
    git: GitState | None
    params_hash: str
    base_model: str
    base_model_revision: str | None
    prefect_flow_run_id: str | None
    missing: tuple[str, ...] = field(default=())

    def tags(self) -> dict[str, str]:
        """Present facts as MLflow tags (absent ones are left out, not written as empty)."""
        tags = {TAG_PARAMS_HASH: self.params_hash, TAG_BASE_MODEL: self.base_model}
        if self.data_dvc_md5:
            tags[TAG_DATA_DVC_MD5] = self.data_dvc_md5
        for stage, value in (self.dvc_lock or {}).items():
            tags[TAG_DVC_LOCK_PREFIX + stage] = value
        if self.git:
            tags[TAG_GIT_COMMIT] = self.git.commit
            tags[TAG_GIT_DIRTY] = str(self.git.dirty).lower()
        if self.base_model_revision:
            tags[TAG_BASE_MODEL_REVISION] = self.base_model_revision
        if self.prefect_flow_run_id:
            tags[TAG_PREFECT_FLOW_RUN_ID] = self.prefect_flow_run_id
        return tags


def collect_lineage(cfg: Config, root: Path) -> LineageFacts:
    """Gather every lineage fact; ``missing`` names the ones whose source was absent."""
    root = Path(root)
    model, revision = base_model(cfg)
    facts = {
        "data_dvc_md5": data_dvc_md5(cfg, root),
        "dvc_lock": dvc_lock_hashes(cfg, root),
        "git": git_state(root),
        "prefect_flow_run_id": prefect_flow_run_id(),
    }
    missing = tuple(k for k, v in facts.items() if v is None and k != "prefect_flow_run_id")
    if missing:
        log.warning("lineage facts missing: %s", ", ".join(missing))
    return LineageFacts(
        **facts,
        params_hash=params_hash(cfg),
        base_model=model,
        base_model_revision=revision,
        missing=missing,
    )


def lineage_tags(cfg: Config, root: Path) -> dict[str, str]:
    """The ``textclf.*`` lineage tags for a run started from ``root`` with ``cfg``."""
    return collect_lineage(cfg, root).tags()

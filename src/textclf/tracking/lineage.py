"""Lineage: the facts recorded on every training run as ``textclf.*`` tags, and ``textclf lineage``,
which follows a model version or run back to them.

Chain: registered version → run → datasets (digest, DVC path) → raw data (``data.dvc`` md5) → code
(git commit). Every link is shown, present or MISSING with the reason, so a gap is visible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from contextlib import chdir
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from textclf.config import Config
from textclf.errors import TextclfError

TAG_DATA_DVC_MD5 = "textclf.data_dvc_md5"
TAG_DVC_LOCK_PREFIX = "textclf.dvc_lock."
TAG_GIT_COMMIT, TAG_GIT_DIRTY = "textclf.git_commit", "textclf.git_dirty"
TAG_PARAMS_HASH, TAG_BASE_MODEL = "textclf.params_hash", "textclf.base_model"
TAG_PREFECT_FLOW_RUN_ID = "textclf.prefect_flow_run_id"

log = logging.getLogger(__name__)
ENV_FLOW_RUN_ID = "PREFECT__FLOW_RUN_ID"  # what Prefect sets for flow-run processes; the flow passes it on


def _git(root: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _dvc_hashes(root: Path, data_dvc: str) -> dict[str, str]:
    """The raw data's md5 (``data.dvc``) and the prepared splits' (``dvc.lock``), as DVC reads them."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    tags: dict[str, str] = {}
    try:
        with chdir(root), Repo(str(root)) as repo:
            if (root / data_dvc).is_file():
                tags[TAG_DATA_DVC_MD5] = str(repo.stage.load_one(data_dvc).outs[0].hash_info.value)
            if (root / "dvc.lock").is_file():
                prepared = repo.stage.load_one("dvc.yaml", "prepare").outs
                if prepared and prepared[0].hash_info.value:
                    tags[TAG_DVC_LOCK_PREFIX + "prepare"] = str(prepared[0].hash_info.value)
    except DvcException as err:  # not a DVC project (a library user's own folder): no DVC lineage
        log.info("no DVC lineage: %s", err)
    return tags


def lineage_tags(cfg: Config, root: Path) -> dict[str, str]:
    """Present facts only (an absent source leaves its tag out rather than writing it empty)."""
    tags = {
        TAG_PARAMS_HASH: hashlib.sha256(
            json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest(),
        TAG_BASE_MODEL: cfg.model.pretrained or "scratch:char-bert",
    }
    tags.update(_dvc_hashes(root, f"{cfg.paths.data_dir}.dvc"))
    if commit := _git(root, "rev-parse", "--verify", "HEAD"):
        tags[TAG_GIT_COMMIT] = commit
        # dvc.lock is rewritten by the pipeline itself while it runs: not a code change.
        status = _git(root, "status", "--porcelain", "--", ".", ":!dvc.lock")
        tags[TAG_GIT_DIRTY] = str(bool(status)).lower()
    if flow_run := os.environ.get(ENV_FLOW_RUN_ID):
        tags[TAG_PREFECT_FLOW_RUN_ID] = flow_run
    return tags


@dataclass
class LineageReport:
    ref: str
    links: list[tuple[str, str | None, str]] = field(default_factory=list)  # name, value, why missing
    info: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(value is not None for _, value, _ in self.links)

    def render(self) -> str:
        lines = [f"lineage of {self.ref}"]
        lines += [
            f"  {name:<16} {value if value is not None else f'MISSING ({why})'}"
            for name, value, why in self.links
        ]
        lines += [f"  {key:<16} {value}" for key, value in self.info.items()]
        missing = [name for name, value, _ in self.links if value is None]
        lines.append("lineage complete" if not missing else "missing links: " + ", ".join(missing))
        return "\n".join(lines)


def _resolve(c: MlflowClient, ref: str, report: LineageReport) -> str | None:
    """The run id behind ``ref``: a run id, ``runs:/<id>``, ``models:/<name>/<version>`` or ``@alias``."""
    ref = ref.strip()
    if not ref.startswith("models:/"):
        return ref.removeprefix("runs:/").split("/", 1)[0]
    name, sep, alias = ref.removeprefix("models:/").partition("@")
    try:
        if sep:
            mv = c.get_model_version_by_alias(name, alias)
        else:
            name, _, version = name.rpartition("/")
            mv = c.get_model_version(name, version)
    except MlflowException as err:
        raise TextclfError(f"no such model version {ref!r}: {err.message}") from None
    aliases = ", ".join(f"@{a}" for a in mv.aliases or []) or "no alias"
    report.links.append(("model version", f"{mv.name} v{mv.version} ({aliases})", ""))
    return mv.run_id


def lineage_report(c: MlflowClient, ref: str) -> LineageReport:
    report = LineageReport(ref)
    run_id = _resolve(c, ref, report)
    try:
        run = c.get_run(run_id or "")
    except MlflowException:
        raise TextclfError(f"run {run_id!r} not found in {c.tracking_uri}") from None
    report.links.append(("run", f"{run.info.run_id} (status {run.info.status})", ""))
    for ds in run.inputs.dataset_inputs if run.inputs else []:
        context = next((t.value for t in ds.tags if t.key == "mlflow.data.context"), "?")
        source = json.loads(ds.dataset.source).get("uri", ds.dataset.source) if ds.dataset.source else "?"
        report.links.append(
            (f"dataset {context}", f"{ds.dataset.name} digest {ds.dataset.digest} from {source}", "")
        )
    if not run.inputs or not run.inputs.dataset_inputs:
        report.links.append(("datasets", None, "the run logged no dataset inputs"))
    tags = run.data.tags
    report.links.append(
        ("data.dvc md5", tags.get(TAG_DATA_DVC_MD5), "data.dvc was absent when the run was logged")
    )
    commit = tags.get(TAG_GIT_COMMIT)
    if commit and tags.get(TAG_GIT_DIRTY) == "true":
        commit += " (dirty: uncommitted changes when the run was logged)"
    report.links.append(("git commit", commit, "the run was not logged from a git checkout"))
    for key in (TAG_PARAMS_HASH, TAG_BASE_MODEL, TAG_PREFECT_FLOW_RUN_ID, TAG_DVC_LOCK_PREFIX + "prepare"):
        if key in tags:
            report.info[key.removeprefix("textclf.")] = tags[key]
    return report

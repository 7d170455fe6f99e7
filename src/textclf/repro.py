"""The project's DVC repository as the Prefect flow uses it, through DVC's Python API: which stages
there are (dvc.yaml), which changed (``Repo.status``), reproducing one, a parameter override as a DVC
experiment, and remote sync. DVC is the one change detector: a stage runs when its deps, params or
outputs changed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any

import yaml

from textclf.errors import TextclfError


class NotRetriable(TextclfError):
    """A failure the same inputs will reproduce (bad data, a bad config, a missing output): no retry."""


def stage_names(root: Path) -> list[str]:
    """The pipeline's stages in dvc.yaml order (which is their dependency order)."""
    return list(yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


@contextmanager
def _repo(root: Path) -> Iterator[Any]:
    """DVC's Repo, from inside the project: DVC resolves stage names and reports paths against the
    current directory."""
    from dvc.repo import Repo

    with chdir(root), Repo(str(root)) as repo:
        yield repo


def changed(root: Path) -> list[str]:
    """Stages (and ``.dvc`` files) whose deps, params or outputs differ from dvc.lock."""
    with _repo(root) as repo:
        return sorted(repo.status())


def status_in_background(root: Path) -> subprocess.Popen[bytes]:
    """``dvc status --quiet`` in a process of its own (exit 0: every stage and ``.dvc`` file up to date),
    so the caller can ask MLflow meanwhile: "no change" then costs the slower of the two, not the sum."""
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", "status", "--quiet"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def remote(root: Path) -> str | None:
    """The project's default DVC remote (``dvc remote add -d``), if it has one."""
    with _repo(root) as repo:
        return repo.config["core"].get("remote")


def pull(root: Path) -> int:
    """``dvc pull --allow-missing``: the data and whatever stage outputs the remote holds (a worker's
    fresh clone then reproduces only what nobody pushed). Returns the number of files fetched."""
    with _repo(root) as repo:
        return int(repo.pull(allow_missing=True)["stats"].get("fetched", 0))


def push(root: Path) -> int:
    """``dvc push``: the data and every stage output to the default remote; returns files pushed."""
    with _repo(root) as repo:
        return int(repo.push())


def _stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Stage commands are `textclf ...`: this environment's bin first on PATH.
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {})}


def _failure(err: Exception) -> tuple[str, bool]:
    """(message, retriable) of a failed reproduction. Only a stage command that crashed or was killed
    is worth a retry: textclf's own exit codes (3-6) say the inputs are at fault, and DVC's errors
    (a declared output missing, a bad dvc.yaml) repeat on every attempt."""
    from dvc.stage.exceptions import StageCmdFailedError

    cause = err.__cause__ or err
    if isinstance(cause, StageCmdFailedError):
        code = re.search(r"exited with (-?\d+)", str(cause))  # DVC keeps the status only in its message
        return f"{err}: {cause}", not (code and 3 <= int(code.group(1)) <= 6)
    return f"{err}: {cause}", False


def reproduce(
    root: Path, stage: str, force: bool = False, env: dict[str, str] | None = None, upstream: bool = False
) -> bool:
    """``dvc repro --single-item <stage>`` (``upstream``: ``dvc repro <stage>``); True when a stage ran.
    ``env`` is added to the stage command's environment."""
    from dvc.exceptions import DvcException

    try:
        with _repo(root) as repo:
            return bool(repo.reproduce(stage, single_item=not upstream, force=force, run_env=_stage_env(env)))
    except DvcException as err:
        message, retriable = _failure(err)
        if retriable:
            raise RuntimeError(message) from err
        raise NotRetriable(message) from err


def produce(root: Path, path: Path) -> None:
    """Reproduce the stage that outputs ``path``, with its upstream: e.g. the workspace's prepared splits,
    which the gate judges every candidate on, before an experiment that runs in a copy."""
    with _repo(root) as repo:
        target = (root / path).resolve()
        stage = next(s for s in repo.index.stages for o in s.outs if Path(o.fs_path).resolve() == target)
    reproduce(root, stage.name, upstream=True)


def run_experiment(root: Path, overrides: list[str], name: str, env: dict[str, str]) -> None:
    """``dvc exp run --temp -S ...``: the whole pipeline with overridden params in a temporary copy of
    the workspace; params.yaml, dvc.lock and the workspace outputs stay as they were. ``env`` reaches
    the stage commands (e.g. the project's MLflow store: the copy must not log into a store of its own)."""
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    env = {**_stage_env(), **env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # DVC starts the experiment's stage commands with this process's environment
    try:
        with _repo(root) as repo:
            repo.experiments.run(params=overrides, tmp_dir=True, name=name)
    except (DvcException, SCMError) as err:  # e.g. no git identity for the experiment's commit
        message, retriable = _failure(err)
        raise (RuntimeError if retriable else NotRetriable)(message) from err
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)

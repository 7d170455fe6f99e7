"""Put a model directory into the BentoML model store and build a bento that serves it.

BentoML keeps its stores under ``$BENTOML_HOME`` and reads that variable on first use: the caller
sets it (to the project's folder) before calling anything here. Builds are offline: bentofile.yaml
pins versions with ``lock_packages: false``, so nothing is resolved against a package index.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textclf import contracts as C
from textclf.config import ServeConfig
from textclf.errors import ConfigError, ModelSourceError, TextclfError
from textclf.model.family import family_of
from textclf.model.predictor import PREPROCESSING_FILE, Preprocessing

log = logging.getLogger(__name__)

BENTOFILE = "bentofile.yaml"
FILES_METADATA = "files_sha256"  # BentoML model metadata: sha256 of every file imported, by path
MODEL_INFO_FILE = "model.yaml"  # what BentoML writes beside the imported files
# Training leftovers that a model directory may hold and serving never needs.
_IGNORE = shutil.ignore_patterns("checkpoint-*", "__pycache__", ".*")


def clean_labels(labels: dict[str, Any]) -> dict[str, str]:
    """BentoML labels are str -> str: drop missing values, stringify the rest."""
    return {str(k): str(v) for k, v in labels.items() if v is not None}


def import_model_dir(
    model_dir: Path, name: str, labels: dict[str, Any], metadata: dict[str, Any] | None = None
) -> str:
    """Copy a textclf model directory into the BentoML model store; returns the tag ``name:version``.

    ``labels`` carry lineage (registry name/version, run id, dataset digests, data.dvc md5, git
    commit, gate decision id...); the max length is added to ``metadata``, and the
    sha256 of every file stored (``files_sha256``), which the service checks before it starts.
    """
    import bentoml

    model_dir = Path(model_dir)
    family_of(model_dir)  # fails naming the files a model directory holds
    preprocessing = Preprocessing.load(model_dir)  # fails with a clear message if not a textclf dir
    meta = {**(metadata or {}), "format": PREPROCESSING_FILE}
    if preprocessing.max_length is not None:  # BentoML's metadata holds no None (the n-gram family's)
        meta["max_length"] = preprocessing.max_length
    with tempfile.TemporaryDirectory(prefix="textclf-import-") as tmp:
        staged = Path(shutil.copytree(model_dir, Path(tmp) / "model", ignore=_IGNORE))
        meta[FILES_METADATA] = C.file_digests(staged)
        with bentoml.models.create(name, labels=clean_labels(labels), metadata=meta) as model:
            shutil.copytree(staged, model.path, dirs_exist_ok=True)
    log.info("imported %s into the BentoML model store as %s", model_dir, model.tag)
    return str(model.tag)


def service_args(model_tag: str, serve_cfg: ServeConfig) -> dict[str, Any]:
    """The bento arguments the service reads at import (see ``schemas.ServiceArgs``): the whole ``serve``
    section, so the served process never reads params.yaml. ``registry_ref`` and ``runtime`` are
    packaging-time choices the service does not read: the runtime reaches it only through the model
    directory's ``textclf_runtime.json`` (see :func:`textclf.serving.release.served_model_dir`)."""
    return {"model_tag": model_tag, "serve": serve_cfg.model_dump(mode="json")}


def check_stored_files(model_path: Path, metadata: Mapping[str, Any]) -> None:
    """Refuse (ModelSourceError naming the files) a stored model whose files differ from the ones
    :func:`import_model_dir` recorded: the service calls this before it loads anything."""
    sealed = metadata.get(FILES_METADATA)
    if not isinstance(sealed, dict):
        raise ModelSourceError(f"{model_path}: no {FILES_METADATA} in the model's metadata: package it again")
    found = C.file_digests(model_path, skip=(MODEL_INFO_FILE,))
    if problems := C.digest_problems(sealed, found):
        raise ModelSourceError(
            f"{model_path}: stored model files differ from the ones packaged: {'; '.join(problems)}; "
            "refusing to serve them"
        )


def build_bento(
    model_tag: str,
    serve_cfg: ServeConfig,
    project_root: Path,
    labels: dict[str, Any] | None = None,
    version: str | None = None,
) -> str:
    """Build a bento from ``project_root/bentofile.yaml`` serving ``model_tag``; returns its tag.

    The bento references the model (pinned to its exact version, also when given ``name:latest``),
    carries the model's lineage labels plus ``labels``, and stores ``serve_cfg`` as bento arguments.
    """
    import bentoml

    project_root = Path(project_root).resolve()
    bentofile = project_root / BENTOFILE
    if not bentofile.is_file():
        raise ConfigError(f"{bentofile} not found: the bento build options live there")
    try:
        model = bentoml.models.get(model_tag)
    except bentoml.exceptions.NotFound:
        raise ModelSourceError(f"model {model_tag} is not in the BentoML model store") from None
    tag = str(model.tag)
    bento_labels = {**model.info.labels, **clean_labels(labels or {}), "model_tag": tag}
    # reload=True: the service module reads its arguments at import, so a second build in the same
    # process must import it again.
    bento = bentoml.bentos.build_bentofile(
        str(bentofile),
        name=serve_cfg.bento_name,
        version=version,
        labels=bento_labels,
        build_ctx=str(project_root),
        args=service_args(tag, serve_cfg),
        reload=True,
    )
    log.info("built bento %s serving %s", bento.tag, tag)
    return str(bento.tag)


def label_bento(bento_tag: str, labels: dict[str, str]) -> None:
    """Add labels to a built Bento (BentoML has no call for it: they live in its bento.yaml)."""
    import yaml

    path = bento_path(bento_tag) / "bento.yaml"
    info = yaml.safe_load(path.read_text(encoding="utf-8"))
    info["labels"] = {**(info.get("labels") or {}), **labels}
    path.write_text(yaml.safe_dump(info, allow_unicode=True, sort_keys=False), encoding="utf-8")


def bento_path(bento_tag: str) -> Path:
    """Folder of a bento in the store (``$BENTOML_HOME/bentos/<name>/<version>``)."""
    import bentoml

    return Path(bentoml.bentos.get(bento_tag).path)


def dockerfile_path(bento_tag: str) -> Path:
    """The Dockerfile BentoML generated for the bento (no Docker needed to generate it)."""
    return bento_path(bento_tag) / "env" / "docker" / "Dockerfile"


def serve_command(bento_tag: str, host: str, port: int) -> list[str]:
    """Argv that serves a built bento (BENTOML_HOME in its environment names the store)."""
    return [sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", host, "--port", str(port)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(
    bento_tag: str, log_path: Path, timeout_s: float = 120.0, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """A real ``bentoml serve`` of ``bento_tag`` on a free loopback port, in its own process group;
    yields its base URL once ``/readyz`` answers, stops the whole group after. ``env`` goes over this
    process's environment (the service's tokens: textclf.serving.auth)."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            serve_command(bento_tag, "127.0.0.1", port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ServeFailed(
                    f"bentoml serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServeFailed(
                    f"bentoml serve not ready after {timeout_s:.0f} s: {log_path.read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield base
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # workers share the group: none outlives it
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


class ServeFailed(TextclfError):
    """A Bento did not start serving."""

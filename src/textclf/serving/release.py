"""Build a Bento from the MLflow registry (default ``models:/<name>@champion``), with lineage labels.

The model directory is taken from the registered version's logged pyfunc model (its ``model_dir``
artifact), imported into the BentoML model store with labels naming the registry version, MLflow
run, dataset digests, data.dvc md5, git commit and gate decision, then built offline.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from textclf.config import Config
from textclf.errors import TextclfError

log = logging.getLogger(__name__)

BENTO_TAG = "textclf.bento_tag"


@dataclass(frozen=True)
class PackageResult:
    bento_tag: str
    model_tag: str
    registered_model: str
    version: str
    run_id: str | None
    dockerfile: str


def resolve_version(c: object, name: str, ref: str) -> str:
    """``ref`` is an alias (champion) or a version number."""
    from mlflow.exceptions import MlflowException

    if ref.isdigit():
        return ref
    try:
        return str(c.get_model_version_by_alias(name, ref).version)  # type: ignore[attr-defined]
    except MlflowException as err:
        raise TextclfError(
            f"no version of {name} has alias @{ref} ({err.message.splitlines()[0]}): run the pipeline "
            "(and the gate) first, or package a version explicitly"
        ) from None


def lineage_labels(c: object, name: str, version: str) -> dict[str, str | None]:
    mv = c.get_model_version(name, version)  # type: ignore[attr-defined]
    run = c.get_run(mv.run_id) if mv.run_id else None  # type: ignore[attr-defined]
    tags = run.data.tags if run else {}
    labels: dict[str, str | None] = {
        "registered_model": name,
        "registered_version": version,
        "mlflow_run_id": mv.run_id,
        "data_dvc_md5": tags.get("textclf.data_dvc_md5"),
        "git_commit": tags.get("textclf.git_commit"),
        "git_dirty": tags.get("textclf.git_dirty"),
        "params_hash": tags.get("textclf.params_hash"),
        "base_model": tags.get("textclf.base_model"),
        "gate_decision_id": (mv.tags or {}).get("textclf.gate.decision_id"),
    }
    for key, value in tags.items():
        if key.startswith("textclf.digest."):
            labels[f"dataset_digest_{key.rsplit('.', 1)[-1]}"] = value
    return labels


def package(cfg: Config, root: Path, ref: str | None = None) -> PackageResult:
    """Import the referenced registry version into BentoML and build the Bento (offline)."""
    from textclf.gate.evidence import download_model_dir, model_source
    from textclf.serving.package import build_bento, dockerfile_path, import_model_dir
    from textclf.tracking import client

    root = Path(root).resolve()
    c = client(cfg, root)
    name = cfg.mlflow.registered_model
    version = resolve_version(c, name, ref or cfg.serve.registry_ref)
    source, run_id = model_source(c, name, version)
    labels = lineage_labels(c, name, version)
    with tempfile.TemporaryDirectory(prefix="textclf-package-") as tmp:
        model_dir = download_model_dir(c, source, Path(tmp))
        model_tag = import_model_dir(model_dir, cfg.serve.model_store_name, labels, {"mlflow_source": source})
    bento_tag = build_bento(model_tag, cfg.serve, root, labels)
    c.set_model_version_tag(name, version, BENTO_TAG, bento_tag)
    log.info("packaged %s version %s as bento %s", name, version, bento_tag)
    return PackageResult(
        bento_tag=bento_tag,
        model_tag=model_tag,
        registered_model=name,
        version=version,
        run_id=run_id,
        dockerfile=str(dockerfile_path(bento_tag)),
    )


def package_champion(cfg: Config, root: Path) -> PackageResult:
    return package(cfg, root, cfg.serve.registry_ref)


def latest_bento(cfg: Config) -> str:
    import bentoml

    bentos = sorted(
        bentoml.bentos.list(cfg.serve.bento_name), key=lambda b: b.info.creation_time, reverse=True
    )
    if not bentos:
        raise TextclfError(f"no bento named {cfg.serve.bento_name} built yet: run `textclf package` first")
    return str(bentos[0].tag)

"""Build a Bento from the MLflow registry (default ``models:/<name>@champion``), with lineage labels,
and find the Bento to serve (the one recorded on the champion version).

The model directory is the registered version's logged pyfunc model's ``model_dir`` artifact. It is
imported into the BentoML model store with labels naming the registry version, MLflow run, dataset
digests, data.dvc md5, git commit and gate decision, then the Bento is built offline and its tag is
recorded on the version (``textclf.bento_tag``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from textclf import contracts as C
from textclf.config import Config
from textclf.errors import TextclfError
from textclf.evaluate.variants import resolve_runtime
from textclf.model.encoder import ONNX_FILES
from textclf.model.family import describe, reference_runtime
from textclf.model.predictor import RUNTIME_FILE, Predictor
from textclf.serving.package import build_bento, dockerfile_path, import_model_dir
from textclf.tracking import registry as R
from textclf.tracking.store import client, gate_account

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageResult:
    bento_tag: str
    model_tag: str
    version: str
    dockerfile: str


def _version(c: object, model: str, ref: str) -> str:
    if ref.isdigit():
        R.require_version(c, model, ref)  # type: ignore[arg-type]
        return ref
    version = R.alias(c, model, ref)  # type: ignore[arg-type]
    if version is None:
        raise TextclfError(f"no version of {model} has alias @{ref}: run the pipeline (and the gate) first")
    return version


LINEAGE_PREFIX = "textclf.lineage."  # version tags: the run's lineage tags as the gate first saw them


def _run_lineage(c: Any, run_id: str | None) -> dict[str, str]:
    tags = c.get_run(run_id).data.tags if run_id else {}
    return {
        k.removeprefix("textclf."): v
        for k, v in tags.items()
        if k.startswith("textclf.") and not k.startswith(("textclf.gate", "textclf.dvc_lock"))
    }


def snapshot_lineage(c: MlflowClient, model: str, version: str) -> None:
    """Copy the run's lineage tags (git commit, data.dvc md5, base model, ...) onto the version, once:
    run tags stay writable by the trainer, version tags only by the gate, so packaging reads these."""
    mv = c.get_model_version(model, version)
    if not any(k.startswith(LINEAGE_PREFIX) for k in mv.tags or {}):
        for key, value in _run_lineage(c, mv.run_id).items():
            c.set_model_version_tag(model, version, LINEAGE_PREFIX + key, value)


def lineage_labels(c: Any, model: str, version: str) -> dict[str, str]:
    mv = c.get_model_version(model, version)
    tags = mv.tags or {}
    lineage = {k.removeprefix(LINEAGE_PREFIX): v for k, v in tags.items() if k.startswith(LINEAGE_PREFIX)}
    if not lineage:  # a version no gate has judged since lineage was snapshotted
        lineage = _run_lineage(c, mv.run_id)
    labels = {
        "registered_model": model,
        "registered_version": version,
        "mlflow_run_id": mv.run_id,
        "gate_decision_id": tags.get(R.GATE_DECISION),
        **{key.replace(".", "_"): value for key, value in lineage.items()},
    }
    return {k: str(v) for k, v in labels.items() if v is not None}


def served_model_dir(c: MlflowClient, model: str, version: str, runtime: str, dst: Path) -> Path:
    """Registry ``version``'s model directory set up to run what ``runtime`` (``serve.runtime``) resolves
    to among its run's variants: the ONNX file beside the weights, and ``textclf_runtime.json`` naming
    the runtime with its parity figures. Packaging, infra validation and the gate all load this: the
    runtime is resolved here, once, and reaches the service only as that file. Every file downloaded is
    checked against the gate's seal (:func:`textclf.tracking.registry.seal`) first."""

    mv = c.get_model_version(model, version)
    model_dir, variants_dir, found = R.version_files(c, model, version, dst)  # checked before any use
    if not R.check_seal(c, model, version, found) and R.alias(c, model, R.CHAMPION) == version:
        log.warning(
            "%s v%s is champion but carries no %s: its files are unverified", model, version, R.SEAL_TAG
        )
    variants: dict[str, Any] = {}
    if runtime != "torch" and variants_dir is not None and (variants_dir / C.PARITY_FILE).is_file():
        variants = json.loads((variants_dir / C.PARITY_FILE).read_text(encoding="utf-8"))["variants"]
    name = resolve_runtime(runtime, variants, reference_runtime(model_dir))
    if name in ONNX_FILES:
        assert variants_dir is not None  # resolve_runtime names a variant only when parity lists it
        shutil.copyfile(variants_dir / ONNX_FILES[name], model_dir / ONNX_FILES[name])
    figures = {k: v for k, v in variants.get(name, {}).items() if k not in ("problems", "passed")}
    (model_dir / RUNTIME_FILE).write_text(json.dumps({"runtime": name, "parity": figures}, indent=2) + "\n")
    _card_numbers(c, mv, model_dir, name, figures)
    return model_dir


@dataclass(frozen=True)
class ServedModel:
    """A registry version as its Bento serves it: :func:`served_model_dir` and its predictor. The gate
    builds its candidate's once and hands it to the evidence, infra validation and packaging."""

    version: str
    model_dir: Path
    predictor: Predictor

    @classmethod
    def load(cls, c: MlflowClient, model: str, version: str, runtime: str, dst: Path) -> ServedModel:
        model_dir = served_model_dir(c, model, version, runtime, dst)
        return cls(version, model_dir, Predictor(model_dir, device="cpu"))


def _card_numbers(c: MlflowClient, mv: Any, model_dir: Path, runtime: str, figures: dict[str, Any]) -> None:
    """Append this version's measured numbers to the model card (README.md) that ships in the Bento: the
    run's test metrics beside its baseline's, the gate's reason, and the served runtime's parity figures."""
    metrics = c.get_run(mv.run_id).data.metrics if mv.run_id else {}
    nan = float("nan")
    rows = [
        f"| {who} | {metrics.get(p + 'accuracy', nan):.4f} | {metrics.get(p + 'macro_f1', nan):.4f} |"
        for who, p in (("this model", C.TEST_PREFIX), ("TF-IDF baseline", f"baseline_{C.TEST_PREFIX}"))
    ]
    served = ", ".join(f"{k} {v:.4g}" for k, v in sorted(figures.items()) if isinstance(v, int | float))
    family = describe(model_dir)
    card = model_dir / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {mv.name} v{mv.version}\n"
    card.write_text(
        "\n".join([text.rstrip("\n"), "", f"## Evaluation of {mv.name} v{mv.version} (textclf)", "",
                   "Test split of the run that trained it (evaluate stage):", "",
                   f"Model family: {family}", "",
                   "| model | accuracy | macro-F1 |", "| --- | --- | --- |", *rows, "",
                   f"Gate: {mv.description or 'not judged'}", "",
                   f"Served runtime: {runtime}" + (f" ({served})" if served else ""), ""]),
        encoding="utf-8",
    )  # fmt: skip


def package_version(
    cfg: Config, root: Path, ref: str | None = None, *, served: ServedModel | None = None
) -> PackageResult:
    """Import the referenced registry version (or the gate's ``served`` candidate, already built) into
    BentoML and build the Bento (offline)."""
    c, model = client(cfg, root), cfg.mlflow.registered_model
    version = served.version if served else _version(c, model, ref or cfg.serve.registry_ref)
    labels = lineage_labels(c, model, version)
    with tempfile.TemporaryDirectory(prefix="textclf-package-") as tmp:
        model_dir = (
            served.model_dir if served else served_model_dir(c, model, version, cfg.serve.runtime, Path(tmp))
        )
        model_tag = import_model_dir(model_dir, cfg.serve.model_store_name, labels)
    bento_tag = build_bento(model_tag, cfg.serve, root, labels)
    with gate_account():  # registry bookkeeping is the gate's: the trainer only reads the registry
        c.set_model_version_tag(model, version, R.BENTO_TAG, bento_tag)
    log.info("packaged %s v%s as bento %s", model, version, bento_tag)
    return PackageResult(bento_tag, model_tag, version, str(dockerfile_path(bento_tag)))


def champion_bento(cfg: Config, root: Path) -> str:
    """The Bento built from the current champion (packaging it first if it has none yet)."""
    c, model = client(cfg, root), cfg.mlflow.registered_model
    version = _version(c, model, R.CHAMPION)
    tag = (c.get_model_version(model, version).tags or {}).get(R.BENTO_TAG)
    return tag or package_version(cfg, root, version).bento_tag

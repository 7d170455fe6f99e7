"""Build the gate's evidence for one registered version by re-scoring it on the CURRENT test split.

The version's logged pyfunc model carries the Hugging Face model directory as its ``model_dir``
artifact; it is downloaded and run through :class:`Predictor`, so champion and challenger are scored
the same way, on the same rows, now. Around the predictions: slices (length buckets, negation), the
same run's baseline metrics, serving measurements (single-text p95 latency on CPU, size on disk),
behavioural checks, and the model's training ids (``train_ids.txt`` logged on its run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from textclf.config import Config, EvaluateConfig
from textclf.errors import DataError
from textclf.evaluate import metrics as M
from textclf.evaluate.report import read_split
from textclf.gate.behaviour import cases_for, run_behaviour_checks
from textclf.gate.decision import BaselineMetrics, CandidateEvidence, ServingMeasurements
from textclf.tracking.lineage import TAG_DIGEST_PREFIX
from textclf.tracking.pyfunc import MODEL_DIR_ARTIFACT
from textclf.tracking.run import test_metric_key
from textclf.tracking.store import client as make_client
from textclf.tracking.store import tracking_uri

log = logging.getLogger(__name__)

TRAIN_IDS_ARTIFACT = "train_ids.txt"
TEST_SPLIT = "test"
_MB = 1024 * 1024


# --------------------------------------------------------------------------- training ids
def log_train_ids(run_id: str, ids: Iterable[str], cfg: Config, root: Path) -> None:
    """Log the prepared ``id`` column of the training split (one id per line) to ``run_id``.

    The gate excludes test examples whose id a model saw in training from the comparison set.
    """
    c = make_client(cfg, root)
    with tempfile.TemporaryDirectory(prefix="textclf-train-ids-") as tmp:
        path = Path(tmp) / TRAIN_IDS_ARTIFACT
        path.write_text("".join(f"{i}\n" for i in map(str, ids)), encoding="utf-8")
        c.log_artifact(run_id, str(path))


def read_train_ids(c: MlflowClient, run_id: str) -> frozenset[str] | None:
    """The run's training ids, or None when it logged none (older runs, foreign models)."""
    with tempfile.TemporaryDirectory(prefix="textclf-train-ids-") as tmp:
        try:
            path = c.download_artifacts(run_id, TRAIN_IDS_ARTIFACT, tmp)
        except (MlflowException, OSError) as err:
            log.info("run %s has no %s: %s", run_id, TRAIN_IDS_ARTIFACT, err)
            return None
        text = Path(path).read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line)


# --------------------------------------------------------------------------- the test split
@dataclass(frozen=True)
class TestSplit:
    """The current prepared test split and its content digest."""

    frame: pd.DataFrame
    digest: str
    path: Path

    __test__ = False  # not a pytest class


def split_digest(frame: pd.DataFrame) -> str:
    """sha256 over the (id, text, label) rows sorted by id: independent of parquet encoding and order."""
    rows = sorted(
        zip(frame["id"].astype(str), frame["text"].astype(str), frame["label"].astype(str), strict=True)
    )
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def load_test_split(cfg: Config, root: Path) -> TestSplit:
    prepared = Path(root) / cfg.paths.prepared
    frame = read_split(prepared, TEST_SPLIT)
    if frame.empty:
        raise DataError(f"the test split in {prepared} is empty")
    frame["id"] = frame["id"].astype(str)
    return TestSplit(frame=frame, digest=split_digest(frame), path=prepared / f"{TEST_SPLIT}.parquet")


def mlflow_dataset_digest(frame: pd.DataFrame) -> str:
    """The digest MLflow gives the frame as a dataset (what training runs tag as textclf.digest.test)."""
    from mlflow.data.pandas_dataset import from_pandas

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return from_pandas(frame, source=TEST_SPLIT, name=TEST_SPLIT, targets="label").digest


def slice_members(frame: pd.DataFrame, cfg: EvaluateConfig) -> dict[str, frozenset[str]]:
    """Test ids per evaluation slice: length buckets and has/no negation, named as in evaluation."""
    texts = frame["text"].tolist()
    ids = frame["id"].tolist()
    which = M.length_slice_index(texts, cfg.length_buckets)
    masks: dict[str, np.ndarray] = {
        name: which == i for i, name in enumerate(M.length_slice_names(cfg.length_buckets))
    }
    if any(cfg.negation_words):
        neg = M.has_negation(texts, cfg.negation_words)
        masks["has_negation"] = neg
        masks["no_negation"] = ~neg
    return {name: frozenset(i for i, m in zip(ids, mask, strict=True) if m) for name, mask in masks.items()}


# --------------------------------------------------------------------------- the model
def model_source(c: MlflowClient, name: str, version: str) -> tuple[str, str | None]:
    """(model source URI, run id) of a registered version."""
    mv = c.get_model_version(name, str(version))
    return str(mv.source), mv.run_id


def _artifact_root(c: MlflowClient, source: str) -> str:
    """Concrete artifact URI of a logged model (``models:/m-<id>`` resolves to its storage location)."""
    if source.startswith("models:/m-"):
        return str(c.get_logged_model(source.removeprefix("models:/").strip("/")).artifact_location)
    return source


def download_model_dir(c: MlflowClient, source: str, dst: Path) -> Path:
    """Download the logged pyfunc model at ``source`` and return its ``model_dir`` artifact folder."""
    import mlflow.artifacts

    root = _artifact_root(c, source).rstrip("/")

    def fetch(rel: str) -> Path:
        # Only MLmodel and the model directory: the logged model also holds a copy of the code.
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{root}/{rel}", dst_path=str(dst), tracking_uri=c.tracking_uri
            )
        )

    mlmodel = yaml.safe_load(fetch("MLmodel").read_text(encoding="utf-8"))
    try:
        rel = mlmodel["flavors"]["python_function"]["artifacts"][MODEL_DIR_ARTIFACT]["path"]
    except (KeyError, TypeError):
        raise DataError(
            f"model {source} has no '{MODEL_DIR_ARTIFACT}' artifact: not a textclf pyfunc model"
        ) from None
    model_dir = fetch(rel)
    if not model_dir.is_dir():
        raise DataError(f"model {source}: artifact {rel} missing after download")
    return model_dir


def model_size_mb(model_dir: Path) -> float:
    """Size on disk of every file in the model directory, in MiB."""
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file()) / _MB


def latency_p95_ms(predict_one: Any, texts: Sequence[str], warmup: int) -> float:
    """p95 of single-text ``predict_one([text])`` wall times in milliseconds."""
    texts = list(texts)
    for t in texts[:warmup]:
        predict_one([t])
    times = []
    for t in texts:
        start = time.perf_counter()
        predict_one([t])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 95))


# --------------------------------------------------------------------------- evidence
@dataclass(frozen=True)
class ScoredModel:
    evidence: CandidateEvidence
    run_id: str | None
    source: str
    notes: tuple[str, ...] = field(default=())
    train_ids_known: bool = False


def _baseline(c: MlflowClient, run_id: str | None) -> BaselineMetrics | None:
    if not run_id:
        return None
    metrics = c.get_run(run_id).data.metrics
    acc, f1 = (
        metrics.get(test_metric_key("baseline", "accuracy")),
        metrics.get(test_metric_key("baseline", "macro_f1")),
    )
    if acc is None or f1 is None:
        return None
    return BaselineMetrics(accuracy=float(acc), macro_f1=float(f1))


def score_model(
    cfg: Config,
    c: MlflowClient,
    label: str,
    source: str,
    run_id: str | None,
    test: TestSplit,
    work_dir: Path,
    *,
    train_ids: frozenset[str] | None = None,
    measure: bool = True,
) -> ScoredModel:
    """Re-score one logged model on ``test``. ``measure=False`` skips what only the challenger needs
    (baseline, serving budget, behaviour): the champion contributes predictions and training ids."""
    from textclf.model.predictor import Predictor

    notes: list[str] = []
    work_dir.mkdir(parents=True, exist_ok=True)
    model_dir = download_model_dir(c, source, work_dir)
    predictor = Predictor(model_dir, device="cpu")
    frame = test.frame
    labels = list(predictor.labels)
    unknown = sorted(set(frame["label"]) - set(labels))
    if unknown:
        raise DataError(f"{label}: test labels {unknown[:5]} are not among the model's labels {labels}")
    proba, truncated = predictor.predict_proba(frame["text"].tolist(), batch_size=cfg.train.eval_batch_size)

    if train_ids is None and run_id:
        train_ids = read_train_ids(c, run_id)
    known = train_ids is not None
    if not known:
        notes.append(
            f"{label}: training data unknown (its run logged no {TRAIN_IDS_ARTIFACT}); "
            "no test example could be excluded as seen in its training"
        )
    if run_id:
        tagged = c.get_run(run_id).data.tags.get(TAG_DIGEST_PREFIX + TEST_SPLIT)
        current = mlflow_dataset_digest(test.frame)
        if tagged and tagged != current:
            notes.append(
                f"{label}: its run was evaluated on another test split (dataset digest {tagged} vs current "
                f"{current}); its logged test metrics and baseline are from that split, the gate re-scored it"
            )

    kwargs: dict[str, Any] = {}
    if measure:
        kwargs["baseline"] = _baseline(c, run_id)
        texts = frame["text"].tolist()[: cfg.gate.latency_texts]
        kwargs["serving"] = ServingMeasurements(
            latency_p95_ms=latency_p95_ms(predictor.predict_proba, texts, cfg.gate.latency_warmup),
            model_size_mb=model_size_mb(model_dir),
        )
        kwargs["behaviour"] = run_behaviour_checks(
            predictor.predict_proba, labels, cases_for(cfg.gate.behaviour), cfg.gate.behaviour
        )
    evidence = CandidateEvidence.from_probabilities(
        version=label,
        labels=labels,
        ids=frame["id"].tolist(),
        gold=frame["label"].tolist(),
        probabilities=proba,
        test_digest=test.digest,
        texts=tuple(frame["text"].tolist()),
        train_ids=train_ids or frozenset(),
        slices=slice_members(frame, cfg.evaluate),
        **kwargs,
    )
    n_trunc = int(np.sum(truncated))
    if n_trunc:
        notes.append(
            f"{label}: {n_trunc:,} of {len(frame):,} test texts truncated to {predictor.max_length} tokens"
        )
    return ScoredModel(evidence, run_id, source, tuple(notes), known)


def score_version(
    cfg: Config,
    c: MlflowClient,
    version: str,
    test: TestSplit,
    work_dir: Path,
    *,
    train_ids: frozenset[str] | None = None,
    measure: bool = True,
) -> ScoredModel:
    source, run_id = model_source(c, cfg.mlflow.registered_model, version)
    return score_model(
        cfg, c, str(version), source, run_id, test, work_dir, train_ids=train_ids, measure=measure
    )


def build_evidence(
    cfg: Config,
    root: Path,
    version: str,
    test_frame: pd.DataFrame,
    train_ids: frozenset[str] | None = None,
    *,
    measure: bool = True,
) -> CandidateEvidence:
    """Evidence for registered ``version`` on ``test_frame`` (columns id, text, label).

    ``train_ids=None`` reads the version's ``train_ids.txt`` run artifact (missing: none excluded).
    """
    frame = test_frame[["id", "text", "label"]].astype(str)
    test = TestSplit(frame=frame, digest=split_digest(frame), path=Path(root) / cfg.paths.prepared)
    c = MlflowClient(tracking_uri=tracking_uri(cfg, root), registry_uri=tracking_uri(cfg, root))
    with tempfile.TemporaryDirectory(prefix="textclf-gate-") as tmp:
        return score_version(cfg, c, version, test, Path(tmp), train_ids=train_ids, measure=measure).evidence

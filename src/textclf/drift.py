"""``textclf monitor``: compare what the champion was asked (the service's traffic records) with what
it was trained on (the train split its MLflow run logged), and say whether the data moved.

Measures (thresholds in ``monitor:`` of params.yaml):

* ``length_psi``: population stability index of text lengths over ``monitor.length_psi_bins`` quantile
  bins of the train split;
* ``ngram_js``: Jensen-Shannon divergence (base 2, 0..1) of character uni- and bigram distributions;
* ``unk_rate_increase``: share of [UNK] tokens of the champion's tokenizer, traffic minus train (not
  measured for the n-gram family, which has no tokenizer);
* ``predicted_class_js``: JS divergence of the predicted-class distribution from the champion's
  predictions on its test split;
* ``confidence_drop`` and ``low_confidence_increase``: mean confidence and the share under
  ``low_confidence``, against the same test predictions.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon

from textclf import contracts as C
from textclf.config import Config, MonitorConfig
from textclf.data.records import TRAFFIC, read_records
from textclf.errors import TextclfError
from textclf.model.predictor import Predictor
from textclf.tracking import registry as R
from textclf.tracking.pyfunc import download_model_dir
from textclf.tracking.store import client, configure_mlflow

log = logging.getLogger(__name__)

_EPS = 1e-4
_TOP_NGRAMS = 5000


def psi(reference: Sequence[float], current: Sequence[float], bins: int) -> float:
    """Population stability index of ``current`` against ``reference`` over reference quantile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    p = np.histogram(reference, edges)[0] / len(reference) + _EPS
    q = np.histogram(current, edges)[0] / len(current) + _EPS
    return float(np.sum((q - p) * np.log(q / p)))


def _ngrams(texts: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(t)
        counts.update(t[i : i + 2] for i in range(len(t) - 1))
    return counts


def ngram_js(reference: Sequence[str], current: Sequence[str]) -> float:
    """JS divergence of character uni+bigram distributions (the train split's top n-grams + "other")."""
    ref, cur = _ngrams(reference), _ngrams(current)
    vocab = [g for g, _ in ref.most_common(_TOP_NGRAMS)]

    def dist(c: Counter[str]) -> np.ndarray:
        known = np.array([c[g] for g in vocab], dtype=float)
        return np.append(known, sum(c.values()) - known.sum()) + _EPS

    return float(jensenshannon(dist(ref), dist(cur), base=2) ** 2)


def label_js(reference: Sequence[str], current: Sequence[str], labels: Sequence[str]) -> float:
    ref, cur = Counter(reference), Counter(current)
    return float(jensenshannon([ref[x] + _EPS for x in labels], [cur[x] + _EPS for x in labels], base=2) ** 2)


def unk_rate(tokenizer: Any, texts: Sequence[str]) -> float:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    return sum(x.count(tokenizer.unk_token_id) for x in ids) / total if total else 0.0


@dataclass
class DriftReport:
    champion: str
    run_id: str
    since: str | None
    n: int
    values: dict[str, float | None] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    drifted: list[str] = field(default_factory=list)
    note: str = ""
    bad_lines: int = 0  # record lines that did not parse (a torn tail, bad UTF-8): skipped

    @property
    def summary(self) -> str:
        if self.note:
            return self.note
        if not self.drifted:
            return f"no drift in {self.n:,} records of v{self.champion}"
        return f"drift in {self.n:,} records of v{self.champion}: " + ", ".join(
            f"{k} {self.values[k]:.3f} > {self.thresholds[k]}" for k in self.drifted
        )

    def markdown(self) -> str:
        rows = [
            f"| {k} | {'' if v is None else f'{v:.4f}'} | {self.thresholds.get(k, '')} | "
            f"{'DRIFT' if k in self.drifted else ('n/a' if v is None else 'ok')} |"
            for k, v in self.values.items()
        ]
        return (
            "\n".join(
                [
                    f"# Monitoring report: {self.summary}",
                    "",
                    f"champion v{self.champion} (run `{self.run_id}`), "
                    f"records since {self.since or 'the start'}; "
                    f"{self.bad_lines} unreadable record lines skipped",
                    "",
                    "| measure | value | threshold | result |",
                    "|---|---|---|---|",
                    *rows,
                ]
            )
            + "\n"
        )


def measure_drift(
    records: list[dict[str, Any]],
    train: pd.DataFrame,
    reference: pd.DataFrame,
    tokenizer: Any,
    labels: Sequence[str],
    m: MonitorConfig,
) -> tuple[dict[str, float | None], list[str]]:
    """The measures and which of them pass their threshold (None: not measurable, e.g. hashed texts)."""
    low = m.low_confidence
    traffic = pd.DataFrame(records)
    texts = traffic["text"].tolist() if "text" in traffic else None
    conf, ref_conf = traffic["confidence"].to_numpy(), reference["confidence"].to_numpy()
    values: dict[str, float | None] = {
        "length_psi": psi(
            train["text"].str.len().to_numpy(), traffic["length"].to_numpy(), m.length_psi_bins
        ),
        "ngram_js": ngram_js(train["text"].tolist(), texts) if texts else None,
        "unk_rate_increase": unk_rate(tokenizer, texts) - unk_rate(tokenizer, train["text"].tolist())
        if texts and tokenizer is not None
        else None,
        "predicted_class_js": label_js(reference["predicted"].tolist(), traffic["label"].tolist(), labels),
        "confidence_drop": float(ref_conf.mean() - conf.mean()),
        "low_confidence_increase": float(np.mean(conf < low) - np.mean(ref_conf < low)),
    }
    limits = {k: getattr(m, k) for k in values}
    return values, [k for k, v in values.items() if v is not None and v > limits[k]]


def _champion_material(
    cfg: Config, root: Path, tmp: Path
) -> tuple[str, str, pd.DataFrame, pd.DataFrame, Any, list[str]]:

    c, model = client(cfg, root), cfg.mlflow.registered_model
    version = R.alias(c, model, R.CHAMPION)
    if version is None:
        raise TextclfError(f"{model} has no @champion to monitor")
    mv = c.get_model_version(model, version)
    train = pd.read_parquet(c.download_artifacts(mv.run_id, C.ARTIFACT_TRAIN, str(tmp)))
    reference = pd.read_parquet(c.download_artifacts(mv.run_id, C.ARTIFACT_PREDICTIONS, str(tmp)))
    predictor = Predictor(download_model_dir(c, str(mv.source), tmp / "model"), device="cpu")
    return version, mv.run_id, train, reference, predictor.tokenizer, predictor.labels


def monitor(cfg: Config, root: Path, since: str | None = None) -> DriftReport:
    """Measure the recorded traffic against the champion; write the report, log a monitoring run."""
    import os

    folder = Path(os.environ.get(C.ENV_MONITORING_DIR) or root / cfg.serve.monitoring.dir)
    with tempfile.TemporaryDirectory(prefix="textclf-monitor-") as tmp:
        version, run_id, train, reference, tokenizer, labels = _champion_material(cfg, root, Path(tmp))
        bad: list[str] = []
        records = [
            r
            for r in read_records(folder, TRAFFIC, since, bad)
            if r.get("model", "").startswith(cfg.serve.model_store_name)
        ]
        report = DriftReport(
            version,
            run_id,
            since,
            len(records),
            thresholds=cfg.monitor.model_dump(exclude={"low_confidence", "min_records"}),
            bad_lines=len(bad),
        )
        if len(records) < cfg.monitor.min_records:
            report.note = (
                f"too little traffic to judge: {len(records)} records < "
                f"monitor.min_records {cfg.monitor.min_records}"
            )
        else:
            report.values, report.drifted = measure_drift(
                records, train, reference, tokenizer, labels, cfg.monitor
            )
    out = root / cfg.paths.reports / "monitoring"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.markdown(), encoding="utf-8")
    (out / "report.json").write_text(
        json.dumps(asdict(report) | {"summary": report.summary}, indent=2), encoding="utf-8"
    )
    _log_run(cfg, root, report, out)
    log.info("%s", report.summary)
    return report


def _log_run(cfg: Config, root: Path, report: DriftReport, out: Path) -> None:
    """A monitoring run in MLflow, linked to the champion version and its training run by tags."""
    import mlflow

    configure_mlflow(cfg, root)
    with mlflow.start_run(run_name=f"monitor v{report.champion}"):
        mlflow.set_tags(
            {
                "textclf.monitoring.version": report.champion,
                "textclf.monitoring.run": report.run_id,
                "textclf.monitoring.drift": ",".join(report.drifted) or "none",
                "mlflow.note.content": report.summary,
            }
        )
        mlflow.log_metrics(
            {
                "records": report.n,
                "bad_lines": report.bad_lines,
                **{k: v for k, v in report.values.items() if v is not None},
            }
        )
        mlflow.log_artifacts(str(out), "monitoring")

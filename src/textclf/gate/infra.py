"""Infra validation (TFX's InfraValidator idea): serve the candidate's built Bento for real before it
may become the champion.

The Bento is started as a ``bentoml serve`` process on a free loopback port; once ``/readyz`` answers,
a golden set (test texts plus the behavioural cases) is replayed through ``/classify`` with concurrency.
It passes when every request answered 200, the served labels agree with the same model's offline
predictions, the p95 latency over HTTP is within the budget and ``/metadata`` names the registry version
and run the Bento was built from.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from textclf.config import Config
from textclf.gate.behaviour import cases_for
from textclf.serving import auth
from textclf.serving.package import ServeFailed, served
from textclf.serving.release import ServedModel, package_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InfraResult:
    passed: bool
    reason: str
    n: int = 0
    ok: int = 0
    agreement: float | None = None
    p95_ms: float | None = None
    seconds: float = 0.0


def replay(
    base: str, texts: Sequence[str], concurrency: int, headers: dict[str, str] | None = None
) -> tuple[list[int], list[str | None], list[float]]:
    """One request per text, ``concurrency`` at a time: status codes, labels (None unless 200), ms."""

    def one(text: str) -> tuple[int, str | None, float]:
        start = time.perf_counter()
        resp = httpx.post(f"{base}/classify", json={"texts": [text]}, headers=headers, timeout=60)
        ms = (time.perf_counter() - start) * 1000
        return resp.status_code, resp.json()[0]["label"] if resp.status_code == 200 else None, ms

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, texts))
    return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]


def infra_validate(
    bento_tag: str,
    texts: Sequence[str],
    offline_labels: Sequence[str],
    lineage: dict[str, str],
    *,
    min_agreement: float,
    max_p95_ms: float | None,
    concurrency: int,
    log_path: Path,
    timeout_s: float,
) -> InfraResult:
    """Serve ``bento_tag`` and judge it against ``offline_labels`` (the same model, predicted offline)."""
    start = time.perf_counter()
    # The Bento is served as deployed (token auth on) with a token of its own for this run, whose
    # bucket holds every request the validation sends; the caller's tokens are not served.
    token, entry = auth.issue(["classify", "read"], rate_limit_burst=2 * len(texts) + 1)
    env = {auth.TOKENS_ENV: json.dumps({"infra-validation": entry}), auth.TOKENS_FILE_ENV: ""}
    headers = {"authorization": f"Bearer {token}"}
    try:
        with served(bento_tag, log_path, timeout_s, env=env) as base:
            metadata = httpx.get(f"{base}/metadata", headers=headers, timeout=30).json()
            codes, labels, ms = replay(base, texts, concurrency, headers)
            # Latency as one client sees it (the gate's budget is per single text): a sequential pass;
            # under concurrency on a small machine p95 is mostly queueing, reported beside it.
            _, _, single_ms = replay(base, texts[:100], 1, headers)
    except ServeFailed as err:
        return InfraResult(
            False, f"the Bento did not start serving: {str(err)[:300]}", seconds=time.perf_counter() - start
        )
    ok = sum(c == 200 for c in codes)
    agreement = float(np.mean([a == b for a, b in zip(labels, offline_labels, strict=True)]))
    p95, p95_loaded = float(np.percentile(single_ms, 95)), float(np.percentile(ms, 95))
    served_lineage = {**metadata.get("lineage", {}), "runtime": metadata.get("runtime")}
    problems = []
    if ok < len(texts):
        problems.append(
            f"{len(texts) - ok} of {len(texts)} requests did not get 200 ({sorted(set(codes) - {200})})"
        )
    if agreement < min_agreement:
        problems.append(f"served labels agree with offline predictions on {agreement:.4f} < {min_agreement}")
    if max_p95_ms is not None and p95 > max_p95_ms:
        problems.append(f"p95 latency over HTTP {p95:.1f} ms > {max_p95_ms} ms (one client at a time)")
    wrong = {k: (served_lineage.get(k), v) for k, v in lineage.items() if served_lineage.get(k) != v}
    if wrong:
        problems.append(f"/metadata lineage differs from the registry: {wrong}")
    reason = "; ".join(problems) or (
        f"{ok}/{len(texts)} answered 200, agreement {agreement:.4f}, p95 {p95:.1f} ms over HTTP "
        f"({p95_loaded:.0f} ms with {concurrency} concurrent clients), lineage matches"
    )
    return InfraResult(not problems, reason, len(texts), ok, agreement, p95, time.perf_counter() - start)


def validate_candidate(
    cfg: Config, root: Path, served: ServedModel, run_id: str | None, test_texts: Sequence[str]
) -> tuple[InfraResult, str]:
    """Package the gate's candidate (``served``: its model directory as the Bento serves it) and validate
    the Bento against the same predictor's offline predictions on the golden set:
    ``gate.infra_validation.golden_texts`` test texts plus the behavioural cases."""

    icfg = cfg.gate.infra_validation
    bento = package_version(cfg, root, served=served).bento_tag
    texts = [
        *test_texts[: icfg.golden_texts],
        *(t for case in cases_for(cfg.gate.behaviour) for t in case.texts),
    ]
    offline = [p.label for p in served.predictor.predict(texts, cfg.train.eval_batch_size)]
    lineage = {"registered_version": served.version, "mlflow_run_id": run_id or ""}
    with tempfile.TemporaryDirectory(prefix="textclf-infra-") as tmp:
        result = infra_validate(
            bento,
            texts,
            offline,
            {**lineage, "runtime": served.predictor.runtime},
            min_agreement=icfg.min_agreement,
            max_p95_ms=cfg.gate.max_latency_p95_ms,
            concurrency=icfg.concurrency,
            log_path=Path(tmp) / "serve.log",
            timeout_s=icfg.start_timeout_s,
        )
    log.info("infra validation of %s: %s (%.0f s)", bento, result.reason, result.seconds)
    return result, bento

"""The promotion gate's decision: a pure function of two models' evidence and ``GateConfig``.

The registry layer scores champion and challenger on the current test split, builds one
:class:`CandidateEvidence` per model and calls :func:`decide`; it then acts on ``Decision.promote``
and stores ``Decision.to_json()`` / ``to_markdown()``. Nothing here touches MLflow, files or torch.

Criteria (each a :class:`CriterionResult`):

* floors on the challenger over the whole test split: accuracy, macro-F1, every class's recall;
* with a champion: both scored on the same split (digest, ids, gold labels) — else refused; on the
  comparison set (test examples neither model saw in training): macro-F1 non-regression within
  ``max_regression``, not significantly worse (exact McNemar or paired bootstrap), optionally a
  significant improvement of at least ``min_improvement``, and per-slice non-regression;
* beats the same run's baseline; serving budget (p95 latency, size); behavioural pass rate.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from textclf.config import GateConfig
from textclf.gate import stats
from textclf.gate.behaviour import BehaviourResult

logger = logging.getLogger(__name__)

FIRST_MODEL_NOTE = "first model: no champion to compare"
# Float noise must not flip a threshold that the numbers meet exactly (e.g. delta == -0.005).
_EPS = 1e-12


# --------------------------------------------------------------------------- evidence
@dataclass(frozen=True)
class BaselineMetrics:
    """The same run's baseline (e.g. TF-IDF + logistic regression) on the same test split."""

    accuracy: float
    macro_f1: float


@dataclass(frozen=True)
class ServingMeasurements:
    """Measured by the caller: p95 latency of a single text on CPU, and model size on disk."""

    latency_p95_ms: float | None = None
    model_size_mb: float | None = None


@dataclass(frozen=True, eq=False)
class CandidateEvidence:
    """One model's predictions on the current test split plus what the gate needs about it.

    ``ids``/``gold``/``predicted`` are aligned; ``probabilities`` (optional) is (n, len(labels)).
    ``texts`` (optional) are the normalized test texts, matched against the other model's
    ``train_texts``; ``train_ids`` are matched against test ids. ``slices`` maps a slice name
    to the test ids in it.
    """

    version: str
    labels: tuple[str, ...]
    ids: tuple[str, ...]
    gold: tuple[str, ...]
    predicted: tuple[str, ...]
    test_digest: str
    probabilities: np.ndarray | None = None
    texts: tuple[str, ...] | None = None
    train_ids: frozenset[str] = frozenset()
    train_texts: frozenset[str] = frozenset()
    slices: Mapping[str, frozenset[str]] = field(default_factory=dict)
    baseline: BaselineMetrics | None = None
    serving: ServingMeasurements | None = None
    behaviour: BehaviourResult | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("labels", "ids", "gold", "predicted"):
            set_(self, name, tuple(str(v) for v in getattr(self, name)))
        if self.texts is not None:
            set_(self, "texts", tuple(self.texts))
        set_(self, "train_ids", frozenset(self.train_ids))
        set_(self, "train_texts", frozenset(self.train_texts))
        set_(self, "slices", {str(k): frozenset(v) for k, v in self.slices.items()})
        n = len(self.ids)
        if n == 0:
            raise ValueError(f"{self.version}: no test predictions")
        if len(set(self.ids)) != n:
            raise ValueError(f"{self.version}: test ids are not unique")
        if not (len(self.gold) == len(self.predicted) == n) or (
            self.texts is not None and len(self.texts) != n
        ):
            raise ValueError(f"{self.version}: ids, gold, predicted and texts must have the same length")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"{self.version}: labels must be >= 2 distinct names, got {list(self.labels)}")
        unknown = (set(self.gold) | set(self.predicted)) - set(self.labels)
        if unknown:
            raise ValueError(f"{self.version}: labels {sorted(unknown)[:5]} not among {list(self.labels)}")
        if self.probabilities is not None:
            proba = np.asarray(self.probabilities, dtype=np.float64)
            if proba.shape != (n, len(self.labels)):
                raise ValueError(
                    f"{self.version}: probabilities shape {proba.shape}, expected ({n}, {len(self.labels)})"
                )
            set_(self, "probabilities", proba)

    @classmethod
    def from_probabilities(
        cls,
        version: str,
        labels: Sequence[str],
        ids: Sequence[str],
        gold: Sequence[str],
        probabilities: np.ndarray,
        test_digest: str,
        **kwargs: Any,
    ) -> CandidateEvidence:
        """Predicted labels are the argmax of ``probabilities`` (columns in ``labels`` order)."""
        proba = np.asarray(probabilities, dtype=np.float64)
        predicted = [labels[i] for i in proba.argmax(axis=1)] if proba.ndim == 2 else []
        return cls(
            version, tuple(labels), tuple(ids), tuple(gold), tuple(predicted), test_digest, proba, **kwargs
        )

    def fingerprint(self) -> str:
        """Content hash of everything the decision reads (used for deterministic decision ids)."""
        h = hashlib.sha256()
        payload = {
            "version": self.version,
            "labels": self.labels,
            "ids": self.ids,
            "gold": self.gold,
            "predicted": self.predicted,
            "test_digest": self.test_digest,
            "texts": self.texts,
            "train_ids": sorted(self.train_ids),
            "train_texts": sorted(self.train_texts),
            "slices": {k: sorted(v) for k, v in sorted(self.slices.items())},
            "baseline": asdict(self.baseline) if self.baseline else None,
            "serving": asdict(self.serving) if self.serving else None,
            "behaviour": self.behaviour.to_dict() if self.behaviour else None,
        }
        h.update(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        return h.hexdigest()


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class CriterionResult:
    """One check. ``applicable=False`` rows (disabled, small slice, n/a) are shown but not counted."""

    name: str
    value: float | int | str | None
    threshold: float | int | str | None
    passed: bool
    detail: str
    comparator: str = ">="
    applicable: bool = True


@dataclass(frozen=True)
class SliceComparison:
    name: str
    n: int
    metric: str
    challenger: float | None
    champion: float | None
    delta: float | None
    evaluated: bool


@dataclass(frozen=True)
class Comparison:
    """Challenger vs champion on the comparison set (current test split minus training overlap)."""

    champion: str
    metric: str
    n_test: int
    n_compared: int
    n_excluded: int  # test examples seen in the champion's (or challenger's) training data
    n_excluded_champion_train: int
    n_excluded_challenger_train: int
    challenger_value: float | None
    champion_value: float | None
    delta: float | None
    challenger_accuracy: float | None
    champion_accuracy: float | None
    test: str
    mcnemar: stats.McNemarResult | None
    bootstrap: stats.BootstrapResult | None
    slices: tuple[SliceComparison, ...] = ()


@dataclass(frozen=True)
class Decision:
    id: str
    promote: bool
    challenger: str
    champion: str | None
    reason: str
    criteria: tuple[CriterionResult, ...]
    comparison: Comparison | None
    note: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[CriterionResult]:
        return [c for c in self.criteria if c.applicable and not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def to_markdown(self) -> str:
        verdict = "PROMOTED" if self.promote else "REJECTED"
        against = f"champion `{self.champion}`" if self.champion else "no champion"
        lines = [
            f"## Promotion decision `{self.id}`: {verdict}",
            "",
            f"challenger `{self.challenger}` vs {against}",
            "",
            f"**{self.reason}**",
            "",
            "| criterion | value | threshold | result | detail |",
            "|---|---|---|---|---|",
        ]
        for c in self.criteria:
            result = ("pass" if c.passed else "FAIL") if c.applicable else "n/a"
            threshold = "" if c.threshold is None else f"{c.comparator} {_fmt(c.threshold)}"
            lines.append(f"| {c.name} | {_fmt(c.value)} | {threshold} | {result} | {_cell(c.detail)} |")
        lines.append("")
        if self.note:
            lines.append(f"_{self.note}_")
        if self.comparison is not None:
            cmp_ = self.comparison
            lines.append(
                f"Comparison set: {cmp_.n_compared:,} of {cmp_.n_test:,} test examples "
                f"({cmp_.n_excluded:,} excluded as seen in training: "
                f"champion {cmp_.n_excluded_champion_train:,}, "
                f"challenger {cmp_.n_excluded_challenger_train:,}); "
                f"deciding test: {cmp_.test}."
            )
            if cmp_.mcnemar is not None:
                m = cmp_.mcnemar
                lines.append(
                    f"McNemar (exact): b={m.b:,} (champion right, challenger wrong), "
                    f"c={m.c:,} (challenger right, champion wrong), {_p(m.p_value)}."
                )
            if cmp_.bootstrap is not None:
                bs = cmp_.bootstrap
                lines.append(
                    f"Paired bootstrap ({bs.n_resamples:,} resamples, seed {bs.seed}): "
                    f"Δ macro-F1 {bs.delta:+.4f}, "
                    f"{bs.confidence:.0%} CI [{bs.ci_low:+.4f}, {bs.ci_high:+.4f}]."
                )
        return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool) or isinstance(v, int):
        return f"{v:,}" if not isinstance(v, bool) else str(v)
    if isinstance(v, float):
        return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"
    return _cell(str(v))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _p(p: float) -> str:
    """``p=0.0386`` or ``p<0.001``."""
    return "p<0.001" if p < 0.001 else f"p={p:.3g}"


# --------------------------------------------------------------------------- criteria
def _at_least(name: str, value: float | None, floor: float, what: str) -> CriterionResult:
    if value is None:
        return CriterionResult(name, None, floor, False, f"{what} not available")
    ok = value >= floor - _EPS
    rel = ">=" if ok else "<"
    return CriterionResult(name, value, floor, ok, f"{what} {value:.3f} {rel} floor {floor:.3f}")


def _floors(ch: CandidateEvidence, cfg: GateConfig) -> list[CriterionResult]:
    k = len(ch.labels)
    gold = stats.encode(ch.gold, ch.labels)
    pred = stats.encode(ch.predicted, ch.labels)
    out = [
        _at_least("accuracy_floor", stats.accuracy(gold, pred), cfg.min_accuracy, "accuracy"),
        _at_least("macro_f1_floor", stats.macro_f1(gold, pred, k), cfg.min_macro_f1, "macro-F1"),
    ]
    recalls = dict(zip(ch.labels, stats.class_recalls(gold, pred, k), strict=True))
    defined = {lab: r for lab, r in recalls.items() if r is not None}
    absent = [lab for lab, r in recalls.items() if r is None]
    per_class = ", ".join(f"{lab} {r:.3f}" for lab, r in defined.items())
    low = [lab for lab, r in defined.items() if r < cfg.min_class_recall - _EPS]
    worst = min(defined.values()) if defined else None
    detail = f"recall per class: {per_class}"
    if low:
        detail = f"recall below {cfg.min_class_recall:.3f} for {low}; {detail}"
    if absent:
        detail += f"; no test examples for {absent}"
    out.append(
        CriterionResult("class_recall_floor", worst, cfg.min_class_recall, bool(defined) and not low, detail)
    )
    return out


def _same_split(ch: CandidateEvidence, cp: CandidateEvidence) -> CriterionResult:
    name = "same_test_split"
    problems = []
    if ch.test_digest != cp.test_digest:
        problems.append(
            f"champion {cp.version} was scored on test split {cp.test_digest[:12]} but challenger "
            f"{ch.version} on {ch.test_digest[:12]}; re-score both on the current split"
        )
    elif set(ch.ids) != set(cp.ids):
        problems.append(f"same digest but different test ids ({len(set(ch.ids) ^ set(cp.ids)):,} differ)")
    else:
        gold_cp = dict(zip(cp.ids, cp.gold, strict=True))
        diff = sum(gold_cp[i] != g for i, g in zip(ch.ids, ch.gold, strict=True))
        if diff:
            problems.append(f"same digest but {diff:,} gold labels differ")
    if set(ch.labels) != set(cp.labels):
        problems.append(f"label sets differ: challenger {list(ch.labels)}, champion {list(cp.labels)}")
    value = (
        ch.test_digest[:12]
        if ch.test_digest == cp.test_digest
        else f"{ch.test_digest[:12]} vs {cp.test_digest[:12]}"
    )
    if problems:
        return CriterionResult(name, value, cp.test_digest[:12], False, "; ".join(problems), comparator="==")
    return CriterionResult(name, value, cp.test_digest[:12], True, "both scored on the same test split", "==")


def _excluded(ids: Sequence[str], texts: Sequence[str] | None, owner: CandidateEvidence) -> np.ndarray:
    """Mask of test examples whose id or normalized text is in ``owner``'s training data."""
    by_id = np.fromiter((i in owner.train_ids for i in ids), dtype=bool, count=len(ids))
    if texts is None or not owner.train_texts:
        return by_id
    by_text = np.fromiter((t in owner.train_texts for t in texts), dtype=bool, count=len(texts))
    return by_id | by_text


def _test_phrase(cmp_: Comparison) -> str:
    if cmp_.test == "bootstrap" and cmp_.bootstrap is not None:
        bs = cmp_.bootstrap
        stat = f"bootstrap {bs.confidence:.0%} CI [{bs.ci_low:+.3f}, {bs.ci_high:+.3f}]"
    elif cmp_.mcnemar is not None:
        stat = f"McNemar {_p(cmp_.mcnemar.p_value)}"
    else:
        stat = "no test"
    return f"{stat}, n={cmp_.n_compared:,}"


def _compare(
    ch: CandidateEvidence, cp: CandidateEvidence, cfg: GateConfig
) -> tuple[Comparison, list[CriterionResult]]:
    labels = ch.labels
    k = len(labels)
    pos_cp = {i: j for j, i in enumerate(cp.ids)}
    order = np.fromiter((pos_cp[i] for i in ch.ids), dtype=np.int64, count=len(ch.ids))
    gold = stats.encode(ch.gold, labels)
    pred_ch = stats.encode(ch.predicted, labels)
    pred_cp = stats.encode(cp.predicted, labels)[order]
    texts = (
        ch.texts if ch.texts is not None else ([cp.texts[j] for j in order] if cp.texts is not None else None)
    )
    ex_cp = _excluded(ch.ids, texts, cp)
    ex_ch = _excluded(ch.ids, texts, ch)
    keep = ~(ex_cp | ex_ch)
    ids_kept = [i for i, m in zip(ch.ids, keep, strict=True) if m]
    g, a, b = gold[keep], pred_ch[keep], pred_cp[keep]
    n = int(keep.sum())

    mcnemar = stats.mcnemar_exact(b == g, a == g) if n else None
    bootstrap = None
    if n and cfg.bootstrap_resamples > 0:
        bootstrap = stats.paired_bootstrap_macro_f1(
            g, a, b, k, cfg.bootstrap_resamples, cfg.seed, confidence=1.0 - cfg.alpha
        )
    v_ch, v_cp = stats.macro_f1(g, a, k), stats.macro_f1(g, b, k)
    delta = None if v_ch is None or v_cp is None else v_ch - v_cp

    slice_rows = _slice_comparisons(ch.slices, ids_kept, g, a, b, k, cfg)
    cmp_ = Comparison(
        champion=cp.version,
        metric="macro_f1",
        n_test=len(ch.ids),
        n_compared=n,
        n_excluded=int((~keep).sum()),
        n_excluded_champion_train=int(ex_cp.sum()),
        n_excluded_challenger_train=int(ex_ch.sum()),
        challenger_value=v_ch,
        champion_value=v_cp,
        delta=delta,
        challenger_accuracy=stats.accuracy(g, a),
        champion_accuracy=stats.accuracy(g, b),
        test=cfg.significance_test,
        mcnemar=mcnemar,
        bootstrap=bootstrap,
        slices=tuple(slice_rows),
    )
    return cmp_, _comparison_criteria(cmp_, cfg)


def _slice_comparisons(
    slices: Mapping[str, frozenset[str]],
    ids_kept: Sequence[str],
    gold: np.ndarray,
    pred_ch: np.ndarray,
    pred_cp: np.ndarray,
    k: int,
    cfg: GateConfig,
) -> list[SliceComparison]:
    metric = stats.accuracy if cfg.slice_metric == "accuracy" else (lambda y, p: stats.macro_f1(y, p, k))
    rows = []
    for name, members in sorted(slices.items()):
        mask = np.fromiter((i in members for i in ids_kept), dtype=bool, count=len(ids_kept))
        n = int(mask.sum())
        if n < cfg.min_slice_size:
            rows.append(SliceComparison(name, n, cfg.slice_metric, None, None, None, evaluated=False))
            continue
        v_ch, v_cp = metric(gold[mask], pred_ch[mask]), metric(gold[mask], pred_cp[mask])
        rows.append(SliceComparison(name, n, cfg.slice_metric, v_ch, v_cp, v_ch - v_cp, evaluated=True))  # type: ignore[operator]
    return rows


def _comparison_criteria(cmp_: Comparison, cfg: GateConfig) -> list[CriterionResult]:
    out: list[CriterionResult] = []
    excluded = f"{cmp_.n_excluded:,} excluded as seen in training"
    if cmp_.n_compared == 0 or cmp_.delta is None:
        detail = f"no test examples left to compare ({excluded})"
        out.append(CriterionResult("non_regression", None, -cfg.max_regression, False, detail))
        return out
    ch, cp, d = cmp_.challenger_value, cmp_.champion_value, cmp_.delta
    phrase = _test_phrase(cmp_)
    ok = d >= -cfg.max_regression - _EPS
    if ok:
        detail = f"macro-F1 {ch:.3f} vs champion {cp:.3f} ({d:+.3f}, {phrase}; {excluded})"
    else:
        detail = f"macro-F1 {ch:.3f} < champion {cp:.3f} - {cfg.max_regression} ({phrase}; {excluded})"
    out.append(CriterionResult("non_regression", d, -cfg.max_regression, ok, detail))

    worse, better = _significance(cmp_, cfg)
    stat_value, stat_threshold, comparator = _stat_value(cmp_, cfg)
    counts = f"b={cmp_.mcnemar.b:,}, c={cmp_.mcnemar.c:,}; " if cmp_.mcnemar else ""
    verdict = "challenger significantly worse than champion" if worse else "not significantly worse"
    detail = f"{verdict} ({counts}{phrase})"
    out.append(
        CriterionResult("not_significantly_worse", stat_value, stat_threshold, not worse, detail, comparator)
    )

    if cfg.min_improvement > 0:
        big_enough = d >= cfg.min_improvement - _EPS
        ok = big_enough and better
        parts = []
        if not big_enough:
            parts.append(f"macro-F1 gain {d:+.3f} < required {cfg.min_improvement:+.3f}")
        if not better:
            parts.append(f"not significantly better ({phrase})")
        detail = (
            "; ".join(parts)
            if parts
            else f"macro-F1 gain {d:+.3f} >= {cfg.min_improvement:+.3f}, significant ({phrase})"
        )
        out.append(CriterionResult("significant_improvement", d, cfg.min_improvement, ok, detail))

    for s in cmp_.slices:
        name = f"slice:{s.name}"
        if not s.evaluated:
            out.append(
                CriterionResult(
                    name,
                    s.n,
                    cfg.min_slice_size,
                    True,
                    f"n={s.n:,} < min_slice_size {cfg.min_slice_size}: not evaluated",
                    applicable=False,
                )
            )
            continue
        ok = s.delta >= -cfg.slice_tolerance - _EPS  # type: ignore[operator]
        rel = "vs" if ok else "regressed vs"
        detail = f"{s.metric} {s.challenger:.3f} {rel} champion {s.champion:.3f} ({s.delta:+.3f}, n={s.n:,})"
        out.append(CriterionResult(name, s.delta, -cfg.slice_tolerance, ok, detail))
    return out


def _significance(cmp_: Comparison, cfg: GateConfig) -> tuple[bool, bool]:
    """(significantly worse, significantly better) by the configured test."""
    if cfg.significance_test == "bootstrap":
        bs = cmp_.bootstrap
        assert bs is not None  # the config validator guarantees resamples when bootstrap decides
        return bs.significantly_worse, bs.significantly_better
    m = cmp_.mcnemar
    assert m is not None
    significant = m.p_value < cfg.alpha
    return significant and m.challenger_worse, significant and m.challenger_better


def _stat_value(cmp_: Comparison, cfg: GateConfig) -> tuple[float | None, float, str]:
    """(value, threshold, comparator) shown for the significance row."""
    if cfg.significance_test == "bootstrap" and cmp_.bootstrap is not None:
        return cmp_.bootstrap.ci_high, 0.0, "CI upper >="
    return (cmp_.mcnemar.p_value if cmp_.mcnemar else None), cfg.alpha, "p (if worse) >="


def _beats_baseline(ch: CandidateEvidence, cfg: GateConfig) -> CriterionResult:
    """Challenger macro-F1 > the same run's baseline. Disabled, the comparison is still reported."""
    name = "beats_baseline"
    if ch.baseline is None:
        if not cfg.require_beats_baseline:
            return CriterionResult(
                name, None, None, True, "disabled (gate.require_beats_baseline=false)", applicable=False
            )
        return CriterionResult(name, None, None, False, "no baseline metrics supplied for this run", ">")
    gold = stats.encode(ch.gold, ch.labels)
    value = stats.macro_f1(gold, stats.encode(ch.predicted, ch.labels), len(ch.labels))
    base = ch.baseline.macro_f1
    ok = value is not None and value > base
    rel = ">" if ok else "<="
    detail = f"macro-F1 {value:.3f} {rel} baseline {base:.3f}"
    if not cfg.require_beats_baseline:
        return CriterionResult(
            name,
            value,
            base,
            True,
            f"{detail} (reported only: gate.require_beats_baseline=false)",
            ">",
            False,
        )
    return CriterionResult(name, value, base, ok, detail, ">")


def _at_most(name: str, value: float | None, limit: float | None, what: str, key: str) -> CriterionResult:
    if limit is None:
        return CriterionResult(name, value, None, True, f"disabled (gate.{key}=null)", "<=", applicable=False)
    if value is None:
        return CriterionResult(name, None, limit, False, f"{what} not measured", "<=")
    ok = value <= limit + _EPS
    rel = "<=" if ok else ">"
    return CriterionResult(name, value, limit, ok, f"{what} {value:,.1f} {rel} limit {limit:,.1f}", "<=")


def _budget(ch: CandidateEvidence, cfg: GateConfig) -> list[CriterionResult]:
    serving = ch.serving or ServingMeasurements()
    return [
        _at_most(
            "latency_p95_ms",
            serving.latency_p95_ms,
            cfg.max_latency_p95_ms,
            "p95 latency (ms)",
            "max_latency_p95_ms",
        ),
        _at_most(
            "model_size_mb",
            serving.model_size_mb,
            cfg.max_model_size_mb,
            "model size (MB)",
            "max_model_size_mb",
        ),
    ]


def _behaviour(ch: CandidateEvidence, cfg: GateConfig) -> CriterionResult:
    name = "behaviour_pass_rate"
    floor = cfg.behaviour.min_pass_rate
    if not cfg.behaviour.enabled:
        return CriterionResult(
            name, None, floor, True, "disabled (gate.behaviour.enabled=false)", applicable=False
        )
    result = ch.behaviour
    if result is None:
        return CriterionResult(name, None, floor, False, "behaviour checks were not run")
    if not result.applicable or result.pass_rate is None:
        return CriterionResult(name, None, floor, True, result.reason or "not applicable", applicable=False)
    ok = result.pass_rate >= floor - _EPS
    failed = ", ".join(f.name for f in result.failures[:5])
    detail = f"{result.n_passed}/{result.n_cases} cases passed" + (f"; failed: {failed}" if failed else "")
    if len(result.failures) > 5:
        detail += f" (+{len(result.failures) - 5} more)"
    return CriterionResult(name, result.pass_rate, floor, ok, detail)


# --------------------------------------------------------------------------- decision
# Failures named first in the reason: the comparison explains a rejection best.
_REASON_PRIORITY = ("same_test_split", "non_regression", "not_significantly_worse", "significant_improvement")


def _reason(promote: bool, criteria: Sequence[CriterionResult], cmp_: Comparison | None) -> str:
    counted = [c for c in criteria if c.applicable]
    if promote:
        tally = f"{len(counted)}/{len(counted)} criteria passed"
        if cmp_ is None:
            floors = {c.name: c.value for c in criteria}
            return (
                f"promoted: {FIRST_MODEL_NOTE}; macro-F1 {floors['macro_f1_floor']:.3f}, "
                f"accuracy {floors['accuracy_floor']:.3f}; {tally}"
            )
        return (
            f"promoted: macro-F1 {cmp_.challenger_value:.3f} vs champion {cmp_.champion_value:.3f} "
            f"({cmp_.delta:+.3f}, {_test_phrase(cmp_)}); {tally}"
        )
    failed = [c for c in counted if not c.passed]
    rank = {name: i for i, name in enumerate(_REASON_PRIORITY)}
    first = min(failed, key=lambda c: rank.get(c.name, len(rank)))
    reason = f"rejected: {first.detail}"
    others = [c.name for c in failed if c is not first]
    if others:
        reason += f"; also failed: {', '.join(others)}"
    return reason


def _decision_id(ch: CandidateEvidence, cp: CandidateEvidence | None, cfg: GateConfig) -> str:
    payload = [ch.fingerprint(), cp.fingerprint() if cp else None, cfg.model_dump(mode="json")]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def decide(
    challenger: CandidateEvidence,
    champion: CandidateEvidence | None,
    cfg: GateConfig,
    decision_id: str | None = None,
) -> Decision:
    """Evaluate every criterion; promote only when all applicable ones pass.

    ``champion=None`` (first model): floors, baseline, serving budget and behaviour only. A champion
    scored on a different test split is refused (``promote=False``), never compared.
    ``decision_id`` defaults to a hash of the inputs, so the same evidence gives the same id.
    """
    criteria: list[CriterionResult] = _floors(challenger, cfg)
    comparison: Comparison | None = None
    note = ""
    if champion is None:
        note = FIRST_MODEL_NOTE
    else:
        same = _same_split(challenger, champion)
        criteria.append(same)
        if same.passed:
            comparison, compared = _compare(challenger, champion, cfg)
            criteria.extend(compared)
        else:
            note = "comparison refused: champion and challenger were not scored on the same test split"
    criteria.append(_beats_baseline(challenger, cfg))
    criteria.extend(_budget(challenger, cfg))
    criteria.append(_behaviour(challenger, cfg))

    promote = all(c.passed for c in criteria if c.applicable)
    reason = _reason(promote, criteria, comparison)
    decision = Decision(
        id=decision_id or _decision_id(challenger, champion, cfg),
        promote=promote,
        challenger=challenger.version,
        champion=champion.version if champion else None,
        reason=reason,
        criteria=tuple(criteria),
        comparison=comparison,
        note=note,
        config=cfg.model_dump(mode="json"),
    )
    logger.info("gate decision %s for %s: %s", decision.id, challenger.version, reason)
    return decision


def slices_from_masks(ids: Sequence[str], masks: Mapping[str, Iterable[bool]]) -> dict[str, frozenset[str]]:
    """``{slice: boolean mask over ids}`` (as evaluation computes them) → ``{slice: ids}``."""
    return {name: frozenset(i for i, m in zip(ids, mask, strict=True) if m) for name, mask in masks.items()}

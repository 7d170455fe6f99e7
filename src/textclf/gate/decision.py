"""The promotion decision: a pure function of two models' evidence and ``GateConfig``.

Criteria (each a :class:`Criterion`):

* floors on the challenger over the whole current test split: accuracy, macro-F1, every class's recall;
* with a champion, on the comparison set (test examples that neither model trained on): macro-F1
  non-regression within ``max_regression``, not significantly worse (exact McNemar or paired
  bootstrap), optionally a significant gain of at least ``min_improvement``, per-slice non-regression;
* against the same run's n-gram baseline, by ``gate.baseline`` (better | not_worse | off); serving budget
  (p95 latency, size); behavioural pass rate.

Nothing here touches MLflow, files or torch: the caller scores both models on the same split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from textclf.config import GateConfig
from textclf.evaluate import metrics as M
from textclf.gate import stats
from textclf.gate.behaviour import BehaviourResult

FIRST_MODEL_NOTE = "first model: no champion to compare"
_EPS = 1e-12  # float noise must not flip a threshold met exactly (e.g. delta == -0.005)


@dataclass(frozen=True, eq=False)
class Evidence:
    """One model's predictions on the current test split plus what the gate measured about it.

    ``ids``/``gold``/``predicted`` are aligned label names; ``train_ids`` are the prepared ids (hashes
    of the normalized text) the model trained on; ``slices`` maps a slice name to its test ids.
    """

    version: str
    labels: tuple[str, ...]
    ids: tuple[str, ...]
    gold: tuple[str, ...]
    predicted: tuple[str, ...]
    train_ids: frozenset[str] = frozenset()
    slices: Mapping[str, frozenset[str]] = field(default_factory=dict)
    baseline_macro_f1: float | None = None
    # The same run's baseline on the same ids (evaluate's baseline predictions): the paired test.
    baseline_predicted: tuple[str, ...] | None = None
    latency_p95_ms: float | None = None
    model_size_mb: float | None = None
    behaviour: BehaviourResult | None = None

    def encoded(self) -> tuple[np.ndarray, np.ndarray]:
        return M.encode_labels(self.gold, self.labels), M.encode_labels(self.predicted, self.labels)

    def digest(self) -> str:
        payload = {k: v for k, v in asdict(self).items() if k not in ("train_ids", "slices")}
        payload["train_ids"] = sorted(self.train_ids)
        payload["slices"] = {k: sorted(v) for k, v in sorted(self.slices.items())}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Criterion:
    """One check. ``applicable=False`` rows (disabled, small slice, n/a) are shown but not counted."""

    name: str
    value: float | int | str | None
    threshold: float | int | str | None
    passed: bool
    detail: str
    comparator: str = ">="
    applicable: bool = True


@dataclass(frozen=True)
class Comparison:
    """Challenger vs champion on the comparison set (current test split minus training overlap)."""

    champion: str
    n_test: int
    n_compared: int
    n_excluded: int
    challenger_macro_f1: float
    champion_macro_f1: float
    delta: float
    mcnemar: stats.McNemarResult
    bootstrap: stats.BootstrapResult | None


@dataclass(frozen=True)
class Decision:
    id: str
    promote: bool
    challenger: str
    champion: str | None
    reason: str
    criteria: tuple[Criterion, ...]
    comparison: Comparison | None = None
    note: str = ""

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if c.applicable and not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=float))

    def to_markdown(self) -> str:
        against = f"champion `{self.champion}`" if self.champion else "no champion"
        lines = [
            f"## Promotion decision `{self.id}`: {'PROMOTED' if self.promote else 'REJECTED'}",
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
        if self.note:
            lines += ["", f"_{self.note}_"]
        if (cmp_ := self.comparison) is not None:
            m = cmp_.mcnemar
            lines += [
                "",
                f"Comparison set: {cmp_.n_compared:,} of {cmp_.n_test:,} test examples ({cmp_.n_excluded:,} "
                f"excluded as seen in training). McNemar (exact): b={m.b:,} (champion right, challenger "
                f"wrong), c={m.c:,} (the reverse), {_p(m.p_value)}.",
            ]
            if (bs := cmp_.bootstrap) is not None:
                lines.append(
                    f"Paired bootstrap ({bs.n_resamples:,} resamples): Δ macro-F1 {bs.delta:+.4f}, "
                    f"{bs.confidence:.0%} CI [{bs.ci_low:+.4f}, {bs.ci_high:+.4f}]."
                )
        return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"
    return "" if v is None else _cell(str(v))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3g}"


# --------------------------------------------------------------------------- criteria
def _at_least(name: str, value: float, floor: float, what: str) -> Criterion:
    ok = value >= floor - _EPS
    return Criterion(name, value, floor, ok, f"{what} {value:.3f} {'>=' if ok else '<'} floor {floor:.3f}")


def _floors(ch: Evidence, cfg: GateConfig) -> list[Criterion]:
    y, pred = ch.encoded()
    k = len(ch.labels)
    recalls = {lab: r for lab, r in zip(ch.labels, M.class_recalls(y, pred, k), strict=True) if r is not None}
    low = [lab for lab, r in recalls.items() if r < cfg.min_class_recall - _EPS]
    detail = "recall per class: " + ", ".join(f"{lab} {r:.3f}" for lab, r in recalls.items())
    if low:
        detail = f"recall below {cfg.min_class_recall:.3f} for {low}; {detail}"
    return [
        _at_least("accuracy_floor", M.accuracy(y, pred), cfg.min_accuracy, "accuracy"),
        _at_least("macro_f1_floor", M.macro_f1(y, pred, k), cfg.min_macro_f1, "macro-F1"),
        Criterion("class_recall_floor", min(recalls.values()), cfg.min_class_recall, not low, detail),
    ]


def compare(ch: Evidence, cp: Evidence, cfg: GateConfig) -> tuple[Comparison | None, list[Criterion]]:
    """Challenger vs champion on the test examples neither trained on (same split, same ids)."""
    if ch.ids != cp.ids or ch.labels != cp.labels:
        raise ValueError("challenger and champion must be scored on the same test rows and labels")
    keep = np.fromiter((i not in cp.train_ids and i not in ch.train_ids for i in ch.ids), bool, len(ch.ids))
    y, a = ch.encoded()
    b = M.encode_labels(cp.predicted, cp.labels)
    y, a, b, k = y[keep], a[keep], b[keep], len(ch.labels)
    n = int(keep.sum())
    if n == 0:
        detail = f"no test examples left to compare ({len(keep):,} seen in training)"
        return None, [Criterion("non_regression", None, -cfg.max_regression, False, detail)]
    bootstrap = None
    if cfg.bootstrap_resamples:
        bootstrap = stats.paired_bootstrap_macro_f1(
            y, a, b, k, cfg.bootstrap_resamples, cfg.seed, 1 - cfg.alpha
        )
    v_ch, v_cp = M.macro_f1(y, a, k), M.macro_f1(y, b, k)
    cmp_ = Comparison(
        cp.version,
        len(keep),
        n,
        len(keep) - n,
        v_ch,
        v_cp,
        v_ch - v_cp,
        stats.mcnemar_exact(b == y, a == y),
        bootstrap,
    )
    ids_kept = [i for i, m in zip(ch.ids, keep, strict=True) if m]
    return cmp_, _comparison_criteria(cmp_, cfg) + _slice_criteria(ch.slices, ids_kept, y, a, b, k, cfg)


def _significance(cmp_: Comparison, cfg: GateConfig) -> tuple[bool, bool, float | None, str]:
    """(significantly worse, significantly better, value shown, comparator) by the configured test."""
    if cfg.significance_test == "bootstrap" and cmp_.bootstrap is not None:
        bs = cmp_.bootstrap
        return bs.ci_high < 0, bs.ci_low > 0, bs.ci_high, "CI upper >="
    m = cmp_.mcnemar
    sig = m.p_value < cfg.alpha
    return sig and m.b > m.c, sig and m.c > m.b, m.p_value, "p (if worse) >="


def _phrase(cmp_: Comparison, cfg: GateConfig) -> str:
    if cfg.significance_test == "bootstrap" and (bs := cmp_.bootstrap) is not None:
        stat = f"bootstrap {bs.confidence:.0%} CI [{bs.ci_low:+.3f}, {bs.ci_high:+.3f}]"
    else:
        stat = f"McNemar {_p(cmp_.mcnemar.p_value)}"
    return f"{stat}, n={cmp_.n_compared:,}"


def _comparison_criteria(cmp_: Comparison, cfg: GateConfig) -> list[Criterion]:
    d, ch, cp = cmp_.delta, cmp_.challenger_macro_f1, cmp_.champion_macro_f1
    worse, better, stat, comparator = _significance(cmp_, cfg)
    phrase, excluded = _phrase(cmp_, cfg), f"{cmp_.n_excluded:,} excluded as seen in training"
    ok = d >= -cfg.max_regression - _EPS
    if ok:
        detail = f"macro-F1 {ch:.3f} vs champion {cp:.3f} ({d:+.3f}, {phrase}; {excluded})"
    else:
        detail = f"macro-F1 {ch:.3f} < champion {cp:.3f} - {cfg.max_regression} ({phrase}; {excluded})"
    m = cmp_.mcnemar
    verdict = "challenger significantly worse than champion" if worse else "not significantly worse"
    out = [
        Criterion("non_regression", d, -cfg.max_regression, ok, detail),
        Criterion(
            "not_significantly_worse",
            stat,
            0.0 if cfg.significance_test == "bootstrap" else cfg.alpha,
            not worse,
            f"{verdict} (b={m.b:,}, c={m.c:,}; {phrase})",
            comparator,
        ),
    ]
    if cfg.min_improvement > 0:
        big = d >= cfg.min_improvement - _EPS
        parts = [f"macro-F1 gain {d:+.3f} < required {cfg.min_improvement:+.3f}"] if not big else []
        parts += [] if better else [f"not significantly better ({phrase})"]
        detail = (
            "; ".join(parts)
            or f"macro-F1 gain {d:+.3f} >= {cfg.min_improvement:+.3f}, significant ({phrase})"
        )
        out.append(Criterion("significant_improvement", d, cfg.min_improvement, big and better, detail))
    return out


def _slice_criteria(
    slices: Mapping[str, frozenset[str]],
    ids: Sequence[str],
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    cfg: GateConfig,
) -> list[Criterion]:
    out = []
    for name, members in sorted(slices.items()):
        mask = np.fromiter((i in members for i in ids), bool, len(ids))
        n = int(mask.sum())
        if n < cfg.min_slice_size:
            detail = f"n={n:,} < min_slice_size {cfg.min_slice_size}: not evaluated"
            out.append(Criterion(f"slice:{name}", n, cfg.min_slice_size, True, detail, applicable=False))
            continue
        if cfg.slice_metric == "accuracy":
            v_a, v_b = M.accuracy(y[mask], a[mask]), M.accuracy(y[mask], b[mask])
        else:
            v_a, v_b = M.macro_f1(y[mask], a[mask], k), M.macro_f1(y[mask], b[mask], k)
        ok = v_a - v_b >= -cfg.slice_tolerance - _EPS
        detail = f"{cfg.slice_metric} {v_a:.3f} {'vs' if ok else 'regressed vs'} champion {v_b:.3f} (n={n:,})"
        out.append(Criterion(f"slice:{name}", v_a - v_b, -cfg.slice_tolerance, ok, detail))
    return out


def _vs_baseline(ch: Evidence, cfg: GateConfig) -> Criterion:
    """The challenger against the same run's n-gram baseline, by ``gate.baseline``: ``better`` needs a
    higher macro-F1 and, when the baseline's predictions on the same test ids are known, exact McNemar
    p < ``gate.alpha`` in the model's favour; ``not_worse`` rejects only a baseline significantly better
    (unpaired: a baseline with the higher macro-F1); ``off`` reports the comparison only. The detail
    shows b (baseline alone right), c (model alone right) and p."""
    policy = cfg.baseline
    if ch.baseline_macro_f1 is None:
        return Criterion(
            "vs_baseline", None, None, False, "no baseline metrics for this run", "vs", policy != "off"
        )
    y, pred = ch.encoded()
    value, base = M.macro_f1(y, pred, len(ch.labels)), ch.baseline_macro_f1
    detail = f"macro-F1 {value:.3f} vs baseline {base:.3f} ({value - base:+.3f})"
    if ch.baseline_predicted is not None:
        baseline = M.encode_labels(ch.baseline_predicted, ch.labels)
        m = stats.mcnemar_exact(baseline == y, pred == y)
        significant = m.p_value < cfg.alpha
        better, worse = value > base and m.c > m.b and significant, m.b > m.c and significant
        detail += f", McNemar b={m.b} c={m.c} {_p(m.p_value)}"
    else:
        better, worse = value > base, value < base
        detail += ", unpaired (no baseline predictions for these test ids)"
    if policy == "better":
        passed = better
        detail += "" if passed else ": not significantly better than the baseline (gate.baseline=better)"
    else:
        passed = not worse
        detail += ": the baseline is significantly better" if worse else ""
        detail += " (reported only: gate.baseline=off)" if policy == "off" else ""
    return Criterion("vs_baseline", value, base, passed, detail, "vs", policy != "off")


def _at_most(name: str, value: float | None, limit: float | None, what: str) -> Criterion:
    if limit is None:
        return Criterion(name, value, None, True, f"disabled (gate.max_{name}=null)", "<=", applicable=False)
    if value is None:
        return Criterion(name, None, limit, False, f"{what} not measured", "<=")
    ok = value <= limit + _EPS
    return Criterion(
        name, value, limit, ok, f"{what} {value:,.1f} {'<=' if ok else '>'} limit {limit:,.1f}", "<="
    )


def _behaviour(ch: Evidence, cfg: GateConfig) -> Criterion:
    floor = cfg.behaviour.min_pass_rate
    result = ch.behaviour
    if result is None:
        return Criterion("behaviour_pass_rate", None, floor, False, "behaviour checks were not run")
    if result.pass_rate is None:
        return Criterion("behaviour_pass_rate", None, floor, True, result.reason, applicable=False)
    ok = result.pass_rate >= floor - _EPS
    return Criterion("behaviour_pass_rate", result.pass_rate, floor, ok, result.reason)


# --------------------------------------------------------------------------- decision
_REASON_FIRST = ("non_regression", "not_significantly_worse", "significant_improvement")


def reason(promote: bool, criteria: Sequence[Criterion], cmp_: Comparison | None) -> str:
    """The one-line reason: what decided a rejection, or the comparison and the tally of a promotion."""
    counted = [c for c in criteria if c.applicable]
    if promote:
        tally = f"{len(counted)}/{len(counted)} criteria passed"
        if cmp_ is None:
            value = {c.name: c.value for c in criteria}
            return (
                f"promoted: {FIRST_MODEL_NOTE}; macro-F1 {value['macro_f1_floor']:.3f}, "
                f"accuracy {value['accuracy_floor']:.3f}; {tally}"
            )
        return (
            f"promoted: macro-F1 {cmp_.challenger_macro_f1:.3f} vs champion {cmp_.champion_macro_f1:.3f} "
            f"({cmp_.delta:+.3f}, McNemar {_p(cmp_.mcnemar.p_value)}, n={cmp_.n_compared:,}); {tally}"
        )
    failed = [c for c in counted if not c.passed]
    first = min(
        failed, key=lambda c: _REASON_FIRST.index(c.name) if c.name in _REASON_FIRST else len(_REASON_FIRST)
    )
    others = [c.name for c in failed if c is not first]
    return f"rejected: {first.detail}" + (f"; also failed: {', '.join(others)}" if others else "")


def decide(challenger: Evidence, champion: Evidence | None, cfg: GateConfig) -> Decision:
    """Evaluate every criterion; promote only when all applicable ones pass.

    The decision id is a hash of the inputs: the same evidence and config give the same id.
    """
    criteria = _floors(challenger, cfg)
    comparison = None
    if champion is not None:
        comparison, compared = compare(challenger, champion, cfg)
        criteria += compared
    criteria += [
        _vs_baseline(challenger, cfg),
        _at_most("latency_p95_ms", challenger.latency_p95_ms, cfg.max_latency_p95_ms, "p95 latency (ms)"),
        _at_most("model_size_mb", challenger.model_size_mb, cfg.max_model_size_mb, "model size (MB)"),
        _behaviour(challenger, cfg),
    ]
    promote = all(c.passed for c in criteria if c.applicable)
    payload = [challenger.digest(), champion.digest() if champion else None, cfg.model_dump(mode="json")]
    return Decision(
        id=hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16],
        promote=promote,
        challenger=challenger.version,
        champion=champion.version if champion else None,
        reason=reason(promote, criteria, comparison),
        criteria=tuple(criteria),
        comparison=comparison,
        note=FIRST_MODEL_NOTE if champion is None else "",
    )

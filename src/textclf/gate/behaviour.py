"""Behavioural checks (CheckList style) run against any ``predict_proba`` callable.

Cases are data, keyed by the roles ``positive``/``negative``; ``GateBehaviourConfig`` maps the roles
to the task's label names. When the labels lack either role (a non-sentiment task) the result is
"not applicable" instead of a failure. Kinds:

* ``mft`` (minimum functionality): an obvious text gets the expected label;
* ``invariance``: two variants (full-/half-width punctuation, trailing space, an emoji) get the same
  label and nearly the same P(positive);
* ``directional``: the second text (negated) must not get a higher P(positive) than the first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from textclf.config import GateBehaviourConfig

logger = logging.getLogger(__name__)

CaseKind = Literal["mft", "invariance", "directional"]
ROLES = ("positive", "negative")


@dataclass(frozen=True)
class BehaviourCase:
    """``texts``: one text (mft) or a pair (invariance: variants; directional: original, negated)."""

    name: str
    kind: CaseKind
    texts: tuple[str, ...]
    expect: str | None = None  # mft only: a role, "positive" or "negative"

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        want = 1 if self.kind == "mft" else 2
        if self.kind not in ("mft", "invariance", "directional"):
            raise ValueError(f"behaviour case {self.name!r}: unknown kind {self.kind!r}")
        if len(self.texts) != want:
            raise ValueError(
                f"behaviour case {self.name!r}: {self.kind} needs {want} text(s), got {len(self.texts)}"
            )
        if self.kind == "mft" and self.expect not in ROLES:
            raise ValueError(
                f"behaviour case {self.name!r}: expect must be one of {ROLES}, got {self.expect!r}"
            )


@dataclass(frozen=True)
class BehaviourFailure:
    name: str
    kind: CaseKind
    detail: str


@dataclass(frozen=True)
class BehaviourResult:
    """``pass_rate`` is None when the checks were not applicable or disabled (see ``reason``)."""

    applicable: bool
    pass_rate: float | None
    n_cases: int
    n_passed: int
    failures: tuple[BehaviourFailure, ...] = ()
    pass_rate_by_kind: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""


def not_applicable(reason: str) -> BehaviourResult:
    return BehaviourResult(applicable=False, pass_rate=None, n_cases=0, n_passed=0, reason=reason)


def load_cases(path: Path | str) -> tuple[BehaviourCase, ...]:
    """Read a YAML (or JSON) list of ``{name, kind, texts, expect?}`` records (gate.behaviour.cases_file)."""
    import yaml

    records = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of behaviour cases")
    return tuple(
        BehaviourCase(str(r["name"]), r["kind"], tuple(str(t) for t in r["texts"]), r.get("expect"))
        for r in records
    )


def _check(
    case: BehaviourCase,
    rows: list[np.ndarray],
    pos: int,
    labels: Sequence[str],
    role_label: Mapping[str, str],
    cfg: GateBehaviourConfig,
) -> str | None:
    """None when the case passes, else a one-line reason."""
    if case.kind == "mft":
        got = labels[int(rows[0].argmax())]
        want = role_label[case.expect or ""]
        return None if got == want else f"{case.texts[0]!r}: predicted {got}, expected {want}"
    p_a, p_b = float(rows[0][pos]), float(rows[1][pos])
    if case.kind == "invariance":
        la, lb = labels[int(rows[0].argmax())], labels[int(rows[1].argmax())]
        if la != lb:
            return f"{case.texts[0]!r} -> {la} but {case.texts[1]!r} -> {lb}"
        if abs(p_a - p_b) > cfg.invariance_tolerance:
            return f"P(positive) moved {abs(p_a - p_b):.3f} > {cfg.invariance_tolerance} between variants"
        return None
    if p_b > p_a + cfg.directional_margin:
        return (
            f"P(positive) of negated {case.texts[1]!r} = {p_b:.3f} > original {case.texts[0]!r} = {p_a:.3f}"
        )
    return None


def run_behaviour_checks(
    predict_proba: Callable[[list[str]], Any],
    labels: Sequence[str],
    cases: Sequence[BehaviourCase] | None = None,
    *,
    cfg: GateBehaviourConfig,
) -> BehaviourResult:
    """Score every case text in one call and report the pass rate and each failure. ``cases`` default
    to :func:`cases_for` ``cfg``. ``predict_proba(texts)`` returns an (n, len(labels)) array in ``labels``
    order (a
    ``(proba, extra)`` tuple such as ``Predictor.predict_proba``'s is accepted too).
    """
    labels = list(labels)
    if not cfg.enabled:
        return not_applicable("disabled (gate.behaviour.enabled=false)")
    role_label = {"positive": cfg.positive_label, "negative": cfg.negative_label}
    missing = [lab for lab in role_label.values() if lab not in labels]
    if missing:
        return not_applicable(f"not applicable: labels {labels} lack {missing}")
    cases = cases_for(cfg) if cases is None else cases
    if not cases:
        return not_applicable("not applicable: no behaviour cases configured")
    texts = [t for case in cases for t in case.texts]
    out = predict_proba(texts)
    proba = np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64)
    if proba.shape != (len(texts), len(labels)):
        raise ValueError(
            f"predict_proba returned shape {proba.shape}, expected ({len(texts)}, {len(labels)})"
        )
    pos = labels.index(cfg.positive_label)
    failures: list[BehaviourFailure] = []
    seen: dict[str, list[bool]] = {}
    row = 0
    for case in cases:
        rows = [proba[row + i] for i in range(len(case.texts))]
        row += len(case.texts)
        problem = _check(case, rows, pos, labels, role_label, cfg)
        seen.setdefault(case.kind, []).append(problem is None)
        if problem is not None:
            failures.append(BehaviourFailure(case.name, case.kind, problem))
    n_passed = len(cases) - len(failures)
    logger.info("behaviour checks: %d/%d passed", n_passed, len(cases))
    return BehaviourResult(
        applicable=True,
        pass_rate=n_passed / len(cases),
        n_cases=len(cases),
        n_passed=n_passed,
        failures=tuple(failures),
        pass_rate_by_kind={k: sum(v) / len(v) for k, v in seen.items()},
        reason=f"{n_passed}/{len(cases)} cases passed"
        + (f"; failed: {', '.join(f.name for f in failures[:5])}" if failures else "")
        + (f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""),
    )


DEFAULT_CASES_FILE = Path(__file__).with_name("behaviour_cases.yaml")


def cases_for(cfg: GateBehaviourConfig) -> tuple[BehaviourCase, ...]:
    """The configured case set: ``cfg.cases_file`` when given, else the built-in ``behaviour_cases.yaml``."""
    return load_cases(cfg.cases_file or DEFAULT_CASES_FILE)

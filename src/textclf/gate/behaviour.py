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

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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


def _mft(name: str, text: str, expect: str) -> BehaviourCase:
    return BehaviourCase(name, "mft", (text,), expect)


def _inv(name: str, a: str, b: str) -> BehaviourCase:
    return BehaviourCase(name, "invariance", (a, b))


def _dir(name: str, original: str, negated: str) -> BehaviourCase:
    return BehaviourCase(name, "directional", (original, negated))


# Chinese product-review sentiment. Short and unambiguous on purpose: a model failing these is
# broken, not merely weak.
DEFAULT_CASES: tuple[BehaviourCase, ...] = (
    _mft("mft_pos_quality", "质量很好，非常满意", "positive"),
    _mft("mft_pos_delivery", "物流很快，包装完好，好评", "positive"),
    _mft("mft_pos_recommend", "性价比很高，推荐购买", "positive"),
    _mft("mft_pos_again", "东西不错，下次还会再来买", "positive"),
    _mft("mft_neg_quality", "质量太差了，非常失望", "negative"),
    _mft("mft_neg_broken", "用了两天就坏了，差评", "negative"),
    _mft("mft_neg_service", "客服态度恶劣，再也不买了", "negative"),
    _mft("mft_neg_fake", "完全是假货，要求退货", "negative"),
    _inv("inv_fullwidth_punct_pos", "质量很好，非常满意！", "质量很好,非常满意!"),
    _inv("inv_fullwidth_punct_neg", "太差了，非常失望。", "太差了,非常失望."),
    _inv("inv_trailing_space_pos", "物流很快", "物流很快   "),
    _inv("inv_trailing_space_neg", "用了两天就坏了", "用了两天就坏了 "),
    _inv("inv_emoji_pos", "非常满意👍", "非常满意"),
    _dir("dir_hen_hao", "很好", "不好"),
    _dir("dir_feichang_manyi", "非常满意", "非常不满意"),
    _dir("dir_tuijian", "推荐购买", "不推荐购买"),
    _dir("dir_xihuan", "很喜欢", "不喜欢"),
    _dir("dir_zhiliang", "质量好", "质量不好"),
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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = [asdict(f) for f in self.failures]
        out["pass_rate_by_kind"] = dict(self.pass_rate_by_kind)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BehaviourResult:
        return cls(
            applicable=bool(raw["applicable"]),
            pass_rate=None if raw.get("pass_rate") is None else float(raw["pass_rate"]),
            n_cases=int(raw["n_cases"]),
            n_passed=int(raw["n_passed"]),
            failures=tuple(BehaviourFailure(**f) for f in raw.get("failures", ())),
            pass_rate_by_kind=dict(raw.get("pass_rate_by_kind", {})),
            reason=str(raw.get("reason", "")),
        )


def not_applicable(reason: str) -> BehaviourResult:
    return BehaviourResult(applicable=False, pass_rate=None, n_cases=0, n_passed=0, reason=reason)


def cases_from_records(records: Sequence[Mapping[str, Any]]) -> tuple[BehaviourCase, ...]:
    """Cases from plain records ``{name, kind, texts, expect?}`` (e.g. a YAML list)."""
    return tuple(
        BehaviourCase(str(r["name"]), r["kind"], tuple(str(t) for t in r["texts"]), r.get("expect"))
        for r in records
    )


def load_cases(path: Path | str) -> tuple[BehaviourCase, ...]:
    """Read a YAML or JSON list of case records (``gate.behaviour.cases_file``)."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    records = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of behaviour cases")
    return cases_from_records(records)


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
    cases: Sequence[BehaviourCase] = DEFAULT_CASES,
    cfg: GateBehaviourConfig | None = None,
) -> BehaviourResult:
    """Score every case text in one call and report the pass rate and each failure.

    ``predict_proba(texts)`` returns an (n, len(labels)) array in ``labels`` order (a
    ``(proba, extra)`` tuple such as ``Predictor.predict_proba``'s is accepted too).
    """
    labels = list(labels)
    cfg = cfg or GateBehaviourConfig()
    if not cfg.enabled:
        return not_applicable("disabled (gate.behaviour.enabled=false)")
    role_label = {"positive": cfg.positive_label, "negative": cfg.negative_label}
    missing = [lab for lab in role_label.values() if lab not in labels]
    if missing:
        return not_applicable(f"not applicable: labels {labels} lack {missing}")
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
        reason=f"{n_passed}/{len(cases)} behaviour cases passed",
    )


def cases_for(cfg: GateBehaviourConfig) -> tuple[BehaviourCase, ...]:
    """The configured case set: ``cfg.cases_file`` when given, else :data:`DEFAULT_CASES`."""
    return load_cases(cfg.cases_file) if cfg.cases_file is not None else DEFAULT_CASES

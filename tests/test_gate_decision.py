"""The promotion gate's decision, statistics and behavioural checks on hand-built predictions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from projects import params, section
from textclf.config import load_config
from textclf.errors import ConfigError, DataError
from textclf.evaluate import metrics as M
from textclf.gate import stats
from textclf.gate.behaviour import BehaviourResult, cases_for, load_cases, run_behaviour_checks
from textclf.gate.decision import Decision, Evidence, decide

LABELS = ("negative", "positive")
N = 1000
IDS = tuple(f"t{i:04d}" for i in range(N))
GOLD = tuple(LABELS[i % 2] for i in range(N))
BEHAVIOUR = section("gate.behaviour")
ALL_PASS_BEHAVIOUR = BehaviourResult(applicable=True, pass_rate=1.0, n_cases=18, n_passed=18)
# params.yaml's gate, with the numbers these tests judge against set here (gate.baseline: better,
# a 100 ms budget) and a smaller bootstrap for speed.
CFG = load_config(Path(__file__).resolve().parents[1] / "params.yaml").gate.model_copy(
    update={
        "bootstrap_resamples": 200,
        "min_slice_size": 50,
        "baseline": "better",
        "max_latency_p95_ms": 100.0,
    }
)


def _flip(label: str) -> str:
    return LABELS[1 - LABELS.index(label)]


def evidence(version: str, wrong: Iterable[int] = (), **kw: object) -> Evidence:
    """Predictions equal to gold except at ``wrong`` positions; everything else passes by default."""
    wrong = set(wrong)
    predicted = tuple(_flip(g) if i in wrong else g for i, g in enumerate(GOLD))
    defaults: dict[str, object] = {
        "baseline_macro_f1": 0.7,
        "latency_p95_ms": 20.0,
        "model_size_mb": 50.0,
        "behaviour": ALL_PASS_BEHAVIOUR,
    }
    defaults.update(kw)
    return Evidence(version, LABELS, IDS, GOLD, predicted, **defaults)  # type: ignore[arg-type]


def by_name(decision: Decision) -> dict[str, object]:
    return {c.name: c for c in decision.criteria}


def b10_c2() -> tuple[Evidence, Evidence]:
    """b=10 (champion right, challenger wrong), c=2 (the reverse), 160 shared errors."""
    shared = set(range(0, 160, 2)) | set(range(1, 160, 2))  # 160 shared errors, both classes
    challenger_only = set(range(600, 610))
    champion_only = set(range(700, 702))
    challenger = evidence("v2", shared | challenger_only)
    champion = evidence("v1", shared | champion_only)
    return challenger, champion


# --------------------------------------------------------------------------- stats
def test_mcnemar_exact_known_table() -> None:
    champ = np.ones(12, dtype=bool)
    chall = np.ones(12, dtype=bool)
    chall[:10] = False  # b = 10: champion right, challenger wrong
    champ[10:] = False  # c = 2
    res = stats.mcnemar_exact(champ, chall)
    assert (res.b, res.c, res.n) == (10, 2, 12)
    assert round(res.p_value, 4) == 0.0386
    swapped = stats.mcnemar_exact(chall, champ)
    assert round(swapped.p_value, 4) == 0.0386 and (swapped.b, swapped.c) == (2, 10)


def test_mcnemar_no_discordant_pairs_is_p_one() -> None:
    same = np.array([True, False, True, True])
    res = stats.mcnemar_exact(same, same)
    assert (res.b, res.c, res.p_value) == (0, 0, 1.0)


def test_macro_f1_matches_sklearn_and_recall_absent_class() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.7, gold, rng.integers(0, 3, 300))
    expected = f1_score(gold, pred, average="macro", labels=[0, 1, 2, 3], zero_division=0)
    assert M.macro_f1(gold, pred, 4) == pytest.approx(expected)
    recalls = M.class_recalls(gold, pred, 4)
    assert recalls[3] is None and recalls[0] == pytest.approx(np.mean(pred[gold == 0] == 0))


def test_paired_bootstrap_is_seeded_and_brackets_delta() -> None:
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 500)
    a = np.where(rng.random(500) < 0.9, gold, 1 - gold)
    b = np.where(rng.random(500) < 0.8, gold, 1 - gold)
    r1 = stats.paired_bootstrap_macro_f1(gold, a, b, 2, 300, seed=7, confidence=0.95)
    r2 = stats.paired_bootstrap_macro_f1(gold, a, b, 2, 300, seed=7, confidence=0.95)
    assert r1 == r2
    assert r1.ci_low < r1.delta < r1.ci_high
    assert r1.delta == pytest.approx(M.macro_f1(gold, a, 2) - M.macro_f1(gold, b, 2))
    assert r1.ci_low > 0  # ~10 points better on 500 examples: significantly better
    same = stats.paired_bootstrap_macro_f1(gold, a, a, 2, 50, seed=7, confidence=0.95)
    assert (same.ci_low, same.ci_high, same.delta) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_matches_naive_loop() -> None:
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 3, 120)
    a = np.where(rng.random(120) < 0.8, gold, rng.integers(0, 3, 120))
    b = np.where(rng.random(120) < 0.7, gold, rng.integers(0, 3, 120))
    res = stats.paired_bootstrap_macro_f1(gold, a, b, 3, 40, seed=11, confidence=0.9)
    idx = np.random.default_rng(11).integers(0, 120, size=(40, 120))  # the same draws, one chunk
    naive = [
        f1_score(gold[i], a[i], average="macro", labels=[0, 1, 2], zero_division=0)
        - f1_score(gold[i], b[i], average="macro", labels=[0, 1, 2], zero_division=0)
        for i in idx
    ]
    low, high = np.quantile(naive, [0.05, 0.95])
    assert (res.ci_low, res.ci_high) == (pytest.approx(low), pytest.approx(high))


# --------------------------------------------------------------------------- criteria
def test_first_model_checks_floors_budget_baseline_behaviour_only() -> None:
    d = decide(evidence("v1", wrong=range(0, 100)), None, CFG)
    names = [c.name for c in d.criteria]
    assert names == [
        "accuracy_floor",
        "macro_f1_floor",
        "class_recall_floor",
        "vs_baseline",
        "latency_p95_ms",
        "model_size_mb",
        "behaviour_pass_rate",
    ]
    assert d.promote and d.champion is None and d.comparison is None
    assert d.note == "first model: no champion to compare"
    expected = "promoted: first model: no champion to compare; macro-F1 0.900, accuracy 0.900"
    assert d.reason == f"{expected}; 7/7 criteria passed"
    assert by_name(d)["accuracy_floor"].value == pytest.approx(0.9)


def test_floors_accuracy_macro_f1_and_class_recall() -> None:
    # 250 errors, all on "negative" gold: accuracy 0.75, negative recall 0.5, positive recall 1.0.
    d = decide(evidence("v1", wrong=range(0, 500, 2)), None, CFG)
    crit = by_name(d)
    assert not d.promote
    assert crit["accuracy_floor"].value == pytest.approx(0.75) and not crit["accuracy_floor"].passed
    assert not crit["macro_f1_floor"].passed
    assert crit["class_recall_floor"].value == pytest.approx(0.5) and not crit["class_recall_floor"].passed
    assert "['negative']" in crit["class_recall_floor"].detail
    assert d.reason.startswith("rejected: accuracy 0.750 < floor 0.800")
    # Only the recall floor: 160 negative errors -> accuracy 0.84, negative recall 0.68 < 0.70.
    d2 = decide(evidence("v1", wrong=range(0, 320, 2)), None, CFG)
    assert [c.name for c in d2.failed] == ["class_recall_floor"]


def test_equal_models_not_significant_and_min_improvement_blocks() -> None:
    shared = range(0, 100)
    challenger, champion = evidence("v2", shared), evidence("v1", shared)
    d = decide(challenger, champion, CFG)
    m = d.comparison.mcnemar
    assert (m.b, m.c, m.p_value) == (0, 0, 1.0)
    assert d.comparison.delta == 0.0
    assert d.promote
    assert by_name(d)["not_significantly_worse"].passed
    strict = decide(challenger, champion, CFG.model_copy(update={"min_improvement": 0.005}))
    assert not strict.promote
    assert [c.name for c in strict.failed] == ["significant_improvement"]
    assert "not significantly better" in strict.reason


def test_regression_and_mcnemar_reason() -> None:
    challenger, champion = b10_c2()
    d = decide(challenger, champion, CFG)
    m = d.comparison.mcnemar
    assert (m.b, m.c, d.comparison.n_compared) == (10, 2, N)
    assert round(m.p_value, 4) == 0.0386
    assert not d.promote
    assert [c.name for c in d.failed] == ["non_regression", "not_significantly_worse"]
    assert d.reason.startswith("rejected: macro-F1 0.830 < champion 0.838 - 0.005 (McNemar p=0.0386, n=1,000")
    assert d.reason.endswith("also failed: not_significantly_worse")


def test_significantly_worse_fails_even_within_tolerance() -> None:
    challenger, champion = b10_c2()
    d = decide(challenger, champion, CFG.model_copy(update={"max_regression": 0.02}))
    assert [c.name for c in d.failed] == ["not_significantly_worse"]
    assert by_name(d)["not_significantly_worse"].value == pytest.approx(0.0386, abs=5e-5)
    # With alpha 0.01 the same table is not significant: promoted.
    d2 = decide(challenger, champion, CFG.model_copy(update={"max_regression": 0.02, "alpha": 0.01}))
    assert d2.promote


def test_significant_improvement_promotes_with_reason() -> None:
    shared = set(range(0, 100))
    challenger = evidence("v2", shared | set(range(600, 605)))  # b = 5
    champion = evidence("v1", shared | set(range(700, 730)))  # c = 30
    cfg = CFG.model_copy(update={"min_improvement": 0.01})
    d = decide(challenger, champion, cfg)
    assert d.promote, d.reason
    assert (d.comparison.mcnemar.b, d.comparison.mcnemar.c) == (5, 30)
    assert d.reason.startswith(
        "promoted: macro-F1 0.895 vs champion 0.870 (+0.025, McNemar p<0.001, n=1,000)"
    )
    assert d.reason.endswith("criteria passed")
    # Gain too small for min_improvement even though significant.
    d2 = decide(challenger, champion, CFG.model_copy(update={"min_improvement": 0.05}))
    assert not d2.promote and "gain +0.025 < required +0.050" in d2.reason


def test_label_shuffled_challenger_rejected_by_floors_and_regression() -> None:
    rng = np.random.default_rng(3)
    wrong = set(np.flatnonzero(rng.random(N) < 0.5).tolist())  # ~50% accuracy
    d = decide(evidence("v2", wrong), evidence("v1", range(0, 100)), CFG)
    failed = {c.name for c in d.failed}
    assert {"accuracy_floor", "macro_f1_floor", "non_regression", "not_significantly_worse"} <= failed
    assert not d.promote and d.comparison.mcnemar.p_value < 1e-10


def test_champion_training_texts_are_excluded_and_counted() -> None:
    # The champion memorized 40 test examples (ids are hashes of the normalized text) that the
    # challenger gets wrong; counted in, they would make the challenger look worse.
    seen = list(range(800, 840))
    challenger = evidence("v2", set(range(0, 100)) | set(seen))
    champion_plain = evidence("v1", range(0, 100))
    leaked = evidence("v1", range(0, 100), train_ids=frozenset(IDS[i] for i in seen) | {"not-in-test"})
    assert not decide(challenger, champion_plain, CFG).promote
    d = decide(challenger, leaked, CFG)
    assert d.promote, d.reason
    c = d.comparison
    assert (c.n_test, c.n_excluded, c.n_compared) == (N, 40, 960)
    assert (c.mcnemar.b, c.mcnemar.c) == (0, 0)
    assert "40 excluded as seen in training" in by_name(d)["non_regression"].detail


def test_slice_regression_detected_and_small_slices_not_judged() -> None:
    negation = range(0, 200)  # challenger loses 10 here (accuracy -0.05) and wins 10 elsewhere
    challenger = evidence(
        "v2",
        range(0, 10),
        slices={"has_negation": frozenset(IDS[i] for i in negation), "tiny": frozenset(IDS[:20])},
    )
    champion = evidence("v1", range(500, 510))
    d = decide(challenger, champion, CFG)
    crit = by_name(d)
    assert crit["non_regression"].passed and crit["not_significantly_worse"].passed
    neg = crit["slice:has_negation"]
    assert not neg.passed and neg.value == pytest.approx(-0.05)
    assert not crit["slice:tiny"].applicable and "not evaluated" in crit["slice:tiny"].detail
    assert not d.promote and d.reason.startswith("rejected: accuracy 0.950 regressed vs champion 1.000")
    relaxed = decide(challenger, champion, CFG.model_copy(update={"slice_tolerance": 0.06}))
    assert relaxed.promote


def _baseline_with(only_baseline_right: int, only_model_right: int) -> tuple[str, ...]:
    """The baseline shares the model's 100 errors (ids 0-99) except the first ``only_baseline_right``,
    and adds ``only_model_right`` of its own."""
    wrong = (set(range(100)) - set(range(only_baseline_right))) | set(range(500, 500 + only_model_right))
    return tuple(_flip(g) if i in wrong else g for i, g in enumerate(GOLD))


def test_beating_the_baseline_must_be_significant_when_its_predictions_are_known() -> None:
    """gate.baseline=better, paired: McNemar on the examples exactly one of model and baseline gets right."""
    model_wrong = set(range(0, 100))  # 100 errors: macro-F1 ~0.90
    close = evidence("v1", model_wrong, baseline_macro_f1=0.89, baseline_predicted=_baseline_with(10, 14))
    row = by_name(decide(close, None, CFG))["vs_baseline"]
    assert not row.passed and "McNemar b=10 c=14" in row.detail and "not significantly better" in row.detail
    clear = evidence("v1", model_wrong, baseline_macro_f1=0.85, baseline_predicted=_baseline_with(5, 40))
    row = by_name(decide(clear, None, CFG))["vs_baseline"]
    assert row.passed and "b=5 c=40 p<0.001" in row.detail
    unpaired = by_name(decide(evidence("v1", model_wrong), None, CFG))["vs_baseline"]
    assert unpaired.passed and "unpaired" in unpaired.detail


def test_not_worse_promotes_a_tie_and_rejects_a_model_the_baseline_beats() -> None:
    """The default policy: a tie (no significant difference) passes with its numbers shown; a model the
    baseline beats significantly (the old char-BERT against TF-IDF) is rejected with b, c and p."""
    cfg = CFG.model_copy(update={"baseline": "not_worse"})
    model_wrong = set(range(0, 100))
    tie = evidence("v1", model_wrong, baseline_macro_f1=0.90, baseline_predicted=_baseline_with(12, 10))
    d = decide(tie, None, cfg)
    assert d.promote and "b=12 c=10" in by_name(d)["vs_baseline"].detail
    beaten = evidence("v1", model_wrong, baseline_macro_f1=0.94, baseline_predicted=_baseline_with(60, 5))
    d = decide(beaten, None, cfg)
    assert not d.promote and [c.name for c in d.failed] == ["vs_baseline"]
    assert "b=60 c=5 p<0.001: the baseline is significantly better" in d.reason
    off = decide(beaten, None, CFG.model_copy(update={"baseline": "off"}))
    assert off.promote and not by_name(off)["vs_baseline"].applicable
    assert "(reported only: gate.baseline=off)" in by_name(off)["vs_baseline"].detail
    assert "vs_baseline" in off.to_markdown()


def test_baseline_requirement() -> None:
    good = evidence("v1", range(0, 100))  # macro-F1 ~0.90
    beaten = evidence("v1", range(0, 100), baseline_macro_f1=0.92)
    d = decide(beaten, None, CFG)
    assert [c.name for c in d.failed] == ["vs_baseline"]
    assert "vs baseline 0.920" in d.reason and "unpaired" in d.reason
    assert decide(good, None, CFG).promote
    missing = decide(evidence("v1", baseline_macro_f1=None), None, CFG)
    assert "no baseline metrics" in missing.reason


def test_serving_budget_violations() -> None:
    slow = evidence("v1", latency_p95_ms=150.0, model_size_mb=600.0)
    d = decide(slow, None, CFG)
    assert [c.name for c in d.failed] == ["latency_p95_ms", "model_size_mb"]
    assert d.reason == "rejected: p95 latency (ms) 150.0 > limit 100.0; also failed: model_size_mb"
    unmeasured = decide(evidence("v1", latency_p95_ms=None), None, CFG)
    assert "not measured" in unmeasured.reason
    unlimited = decide(
        slow, None, CFG.model_copy(update={"max_latency_p95_ms": None, "max_model_size_mb": None})
    )
    assert unlimited.promote


# --------------------------------------------------------------------------- behaviour
NEG_MARKERS = ("不", "差", "坏", "失望", "恶劣", "假货", "退货")


def lexicon_proba(texts: list[str]) -> np.ndarray:
    """A fake classifier: negative when any negative marker occurs. Columns: negative, positive."""
    p_pos = np.array([0.1 if any(m in t for m in NEG_MARKERS) else 0.9 for t in texts])
    return np.column_stack([1 - p_pos, p_pos])


def test_behaviour_checks_with_fake_classifier() -> None:
    res = run_behaviour_checks(lexicon_proba, LABELS, cfg=BEHAVIOUR)
    assert res.applicable and res.n_cases == len(cases_for(section("gate.behaviour"))) == 18
    # "东西不错" contains 不: the lexicon model calls it negative, the only failure.
    assert [f.name for f in res.failures] == ["mft_pos_again"]
    assert res.pass_rate == pytest.approx(17 / 18)
    assert res.pass_rate_by_kind == {"mft": 7 / 8, "invariance": 1.0, "directional": 1.0}


def test_behaviour_inverted_classifier_fails_gate() -> None:
    def inverted(texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        return lexicon_proba(texts)[:, ::-1], [False] * len(texts)  # Predictor-style tuple

    res = run_behaviour_checks(inverted, LABELS, cfg=BEHAVIOUR)
    assert res.pass_rate == pytest.approx(6 / 18)
    assert {f.kind for f in res.failures} == {"mft", "directional"}
    d = decide(evidence("v1", behaviour=res), None, CFG)
    assert [c.name for c in d.failed] == ["behaviour_pass_rate"]
    assert d.reason.startswith("rejected: 6/18 cases passed; failed: mft_pos_quality")


def test_behaviour_invariance_tolerance() -> None:
    def jittery(texts: list[str]) -> np.ndarray:
        p = lexicon_proba(texts)
        shift = np.array([0.08 if t != t.strip() else 0.0 for t in texts])  # trailing space moves P
        return np.column_stack([p[:, 0] + shift, p[:, 1] - shift])

    assert run_behaviour_checks(jittery, LABELS, cfg=BEHAVIOUR).pass_rate == pytest.approx(17 / 18)
    strict = run_behaviour_checks(jittery, LABELS, cfg=section("gate.behaviour", invariance_tolerance=0.05))
    assert {f.name for f in strict.failures} == {
        "mft_pos_again",
        "inv_trailing_space_pos",
        "inv_trailing_space_neg",
    }


def test_behaviour_not_applicable_or_disabled() -> None:
    calls: list[int] = []

    def never(texts: list[str]) -> np.ndarray:
        calls.append(1)
        return np.zeros((len(texts), 2))

    na = run_behaviour_checks(never, ["sports", "politics"], cfg=BEHAVIOUR)
    assert not na.applicable and na.pass_rate is None and "not applicable" in na.reason
    off = run_behaviour_checks(never, LABELS, cfg=section("gate.behaviour", enabled=False))
    assert not off.applicable and "disabled" in off.reason
    assert calls == []
    d = decide(evidence("v1", behaviour=na), None, CFG)
    assert d.promote and not by_name(d)["behaviour_pass_rate"].applicable
    assert d.reason.endswith("6/6 criteria passed")
    missing = decide(evidence("v1", behaviour=None), None, CFG)
    assert missing.reason == "rejected: behaviour checks were not run"


def test_behaviour_custom_roles_and_cases_file(tmp_path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(
        "- {name: good, kind: mft, texts: [很好], expect: positive}\n"
        "- {name: neg, kind: directional, texts: [好, 不好]}\n",
        encoding="utf-8",
    )
    cases = load_cases(path)
    cfg = section("gate.behaviour", positive_label="pos", negative_label="neg")
    res = run_behaviour_checks(lexicon_proba, ["neg", "pos"], cases=cases, cfg=cfg)
    assert (res.n_cases, res.pass_rate) == (2, 1.0)
    with pytest.raises(ValueError, match="shape"):
        run_behaviour_checks(lambda t: np.zeros((1, 2)), LABELS, cfg=BEHAVIOUR)


# --------------------------------------------------------------------------- bootstrap decides
def test_bootstrap_as_deciding_test() -> None:
    cfg = CFG.model_copy(update={"significance_test": "bootstrap", "max_regression": 0.05})
    worse = decide(evidence("v2", range(0, 140)), evidence("v1", range(0, 100)), cfg)
    bs = worse.comparison.bootstrap
    assert bs.n_resamples == 200 and bs.confidence == pytest.approx(0.95)
    assert bs.ci_high < 0 and [c.name for c in worse.failed] == ["not_significantly_worse"]
    assert "bootstrap 95% CI" in worse.reason
    same = decide(evidence("v2", range(0, 100)), evidence("v1", range(0, 100)), cfg)
    assert same.promote and same.comparison.bootstrap.ci_low == same.comparison.bootstrap.ci_high == 0.0


# --------------------------------------------------------------------------- record
def test_decision_id_json_and_markdown() -> None:
    challenger, champion = b10_c2()
    d1, d2 = decide(challenger, champion, CFG), decide(challenger, champion, CFG)
    assert d1.id == d2.id and len(d1.id) == 16
    assert decide(challenger, champion, CFG.model_copy(update={"alpha": 0.01})).id != d1.id

    raw = json.loads(json.dumps(d1.to_dict()))
    assert raw["promote"] is False and raw["comparison"]["mcnemar"]["b"] == 10
    assert raw["comparison"]["bootstrap"]["n_resamples"] == 200
    assert [c["name"] for c in raw["criteria"]][:4] == [
        "accuracy_floor",
        "macro_f1_floor",
        "class_recall_floor",
        "non_regression",
    ]

    md = d1.to_markdown()
    assert "| criterion | value | threshold | result | detail |" in md
    assert "| non_regression | -0.0080 | >= -0.0050 | FAIL |" in md
    assert f"**{d1.reason}**" in md
    assert "b=10 (champion right, challenger wrong), c=2" in md


def test_unknown_labels_are_a_data_error() -> None:
    with pytest.raises(DataError, match="not among"):
        decide(Evidence("v", LABELS, ("a",), ("neutral",), ("positive",)), None, CFG)


def test_gate_config_validation() -> None:
    with pytest.raises(ConfigError, match="bootstrap_resamples"):
        params({"gate": {"significance_test": "bootstrap", "bootstrap_resamples": 0}})
    with pytest.raises(ConfigError, match="gate.max_regresion: unknown key"):
        params({"gate": {"max_regresion": 0.01}})

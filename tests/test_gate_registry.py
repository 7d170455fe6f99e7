"""Registry layer of the promotion gate against a real MLflow SQLite store in a temp project.

Tiny BERT classifiers on a toy separable task: a "good" one (trained a few steps: the label is
given by marker characters), an identical copy logged as another run, and an untrained one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")
torch = pytest.importorskip("torch")

from textclf.config import Config, NormalizeConfig, apply_overrides  # noqa: E402
from textclf.gate import registry as R  # noqa: E402
from textclf.gate.decision import FIRST_MODEL_NOTE  # noqa: E402
from textclf.gate.evidence import (  # noqa: E402
    TRAIN_IDS_ARTIFACT,
    build_evidence,
    log_train_ids,
    read_train_ids,
    slice_members,
    split_digest,
)
from textclf.gate.promote import GateRejected, promote, rollback, run_gate  # noqa: E402
from textclf.model.predictor import Preprocessing  # noqa: E402
from textclf.tracking import log_training_run  # noqa: E402
from textclf.tracking.store import client  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The specified dataset source can be interpreted")

LABELS = ["negative", "positive"]
POS, NEG = list("好棒赞爱"), list("差坏烂糟")
FILLER = list("的了是一个东西质量服务快递包装价格还有这次买")
NEGATION = "不"
N_LEAK = 10  # test ids the "copy" run claims to have trained on


def _text(rng: np.random.Generator, label: int) -> str:
    body = list(rng.choice(FILLER, size=int(rng.integers(4, 30))))
    if rng.random() < 0.3:
        body.insert(int(rng.integers(0, len(body))), NEGATION)
    markers = POS if label else NEG
    for _ in range(int(rng.integers(1, 3))):
        body.insert(int(rng.integers(0, len(body) + 1)), str(rng.choice(markers)))
    return "".join(body)


def _split(rng: np.random.Generator, n: int, seen: set[str]) -> pd.DataFrame:
    rows = []
    while len(rows) < n:
        label = len(rows) % 2
        text = _text(rng, label)
        if text in seen:
            continue
        seen.add(text)
        rows.append(
            {"id": hashlib.sha256(text.encode()).hexdigest()[:16], "text": text, "label": LABELS[label]}
        )
    return pd.DataFrame(rows)


def _make_model(model_dir: Path, train: pd.DataFrame | None, seed: int) -> None:
    """A tiny char-level BERT; trained on ``train`` for a few steps when given, else left random."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POS, *NEG, *FILLER, NEGATION]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={lab: i for i, lab in enumerate(LABELS)},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    if train is not None:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        texts, y = train["text"].tolist(), torch.tensor([LABELS.index(v) for v in train["label"]])
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(60):
            idx = torch.randint(0, len(texts), (32,), generator=gen)
            enc = tokenizer([texts[i] for i in idx], padding=True, return_tensors="pt")
            loss = model(**enc, labels=y[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    Preprocessing(normalize=NormalizeConfig(), max_length=48).save(model_dir)


def _cfg(name: str, **gate: object) -> Config:
    lenient = {
        "min_accuracy": 0.6,
        "min_macro_f1": 0.6,
        "min_class_recall": 0.5,
        "min_slice_size": 20,
        "bootstrap_resamples": 200,
        "max_latency_p95_ms": 2000,
        "latency_texts": 8,
        "latency_warmup": 1,
        "behaviour": {"min_pass_rate": 0.0},
        "registry": {"lock_timeout_s": 60},
    }
    return apply_overrides(Config(), {"mlflow": {"registered_model": name}, "gate": {**lenient, **gate}})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gateproj")
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    splits = {"train": _split(rng, 300, seen), "val": _split(rng, 40, seen), "test": _split(rng, 240, seen)}
    prepared = root / "artifacts" / "prepared"
    prepared.mkdir(parents=True)
    for s, frame in splits.items():
        frame.to_parquet(prepared / f"{s}.parquet", index=False)
    good, rand = root / "models" / "good", root / "models" / "random"
    good.mkdir(parents=True)
    rand.mkdir(parents=True)
    _make_model(good, splits["train"], seed=0)
    _make_model(rand, None, seed=1)
    # Same model and steps, trained on train with its labels shuffled: fits noise, not sentiment.
    shuffled = root / "models" / "shuffled"
    shuffled.mkdir(parents=True)
    noise = splits["train"].assign(label=splits["train"]["label"].sample(frac=1.0, random_state=3).to_numpy())
    _make_model(shuffled, noise, seed=0)

    cfg = Config()
    paths = {s: f"artifacts/prepared/{s}.parquet" for s in splits}

    def log(model_dir: Path, name: str) -> str:
        logged = log_training_run(
            cfg,
            root,
            model_dir=model_dir,
            splits=splits,
            split_paths=paths,
            history=[],
            train_summary={},
            test_metrics={"transformer": {"macro_f1": 0.9}, "baseline": {"macro_f1": 0.55, "accuracy": 0.56}},
            run_name=name,
        )
        return logged.run_id

    runs = {
        "good": log(good, "good"),
        "copy": log(good, "copy"),
        "random": log(rand, "random"),
        "shuffled": log(shuffled, "shuffled"),
    }
    train_ids = splits["train"]["id"].tolist()
    log_train_ids(runs["good"], train_ids, cfg, root)
    log_train_ids(runs["copy"], train_ids + splits["test"]["id"].head(N_LEAK).tolist(), cfg, root)
    # runs["random"] logs no training ids: its training data is "unknown"
    return {"root": root, "runs": runs, "splits": splits, "client": client(cfg, root)}


def _model_uri(c, run_id: str) -> str:
    return f"models:/{c.get_run(run_id).outputs.model_outputs[0].model_id}"


def _register(p: dict, cfg: Config, which: str) -> str:
    run_id = p["runs"][which]
    return R.register_candidate(cfg, p["root"], run_id, _model_uri(p["client"], run_id))


def _assert_history_consistent(p: dict, cfg: Config) -> list[R.Event]:
    events = R.history(cfg, p["root"])
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert R.aliases_from_history(events) == R.current_aliases(p["client"], cfg.mlflow.registered_model)
    return events


# --------------------------------------------------------------------------- pure helpers
def test_history_replay_and_open_transactions() -> None:
    ev = [
        R.Event(1, "t", "begin", "2", txn="a"),
        R.Event(2, "t", "set_alias", "1", alias="previous-champion", txn="a"),
        R.Event(3, "t", "set_alias", "2", alias="champion", previous="1", txn="a"),
        R.Event(4, "t", "remove_alias", None, alias="challenger", previous="2", txn="a"),
        R.Event(5, "t", "commit", "2", txn="a"),
        R.Event(6, "t", "begin", "3", txn="b"),
    ]
    assert R.aliases_from_history(ev) == {"previous-champion": "1", "champion": "2"}
    assert R.open_transactions(ev) == ["b"]
    assert R.events_from_tags({R.history_tag(e.seq): e.to_json() for e in reversed(ev)}) == ev
    assert R.history_tag(7) == "textclf.history.000007"


def test_lock_kind_by_store(tmp_path: Path) -> None:
    rc = Config().gate.registry
    assert R.lock_kind(f"sqlite:///{tmp_path}/mlflow.db", rc) == "file"
    assert R._lock_file(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db.textclf-registry.lock"
    assert R.lock_kind("http://mlflow.internal:5000", rc) == "lease"
    assert R.lock_kind("postgresql://u@h/db", rc) == "lease"


def test_split_digest_and_slices(project: dict) -> None:
    test = project["splits"]["test"]
    assert split_digest(test) == split_digest(test.sample(frac=1.0, random_state=1))
    changed = test.copy()
    changed.loc[0, "label"] = "positive" if changed.loc[0, "label"] == "negative" else "negative"
    assert split_digest(changed) != split_digest(test)
    slices = slice_members(test, Config().evaluate)
    assert set(slices) == {
        "len_le_20",
        "len_21_50",
        "len_51_100",
        "len_gt_100",
        "has_negation",
        "no_negation",
    }
    assert slices["has_negation"] | slices["no_negation"] == set(test["id"])
    assert slices["has_negation"] == {i for i, t in zip(test["id"], test["text"], strict=True) if "不" in t}


def test_train_ids_roundtrip(project: dict) -> None:
    c, runs = project["client"], project["runs"]
    assert read_train_ids(c, runs["good"]) == frozenset(project["splits"]["train"]["id"])
    assert read_train_ids(c, runs["random"]) is None
    assert TRAIN_IDS_ARTIFACT in {a.path for a in c.list_artifacts(runs["good"])}


def test_build_evidence_for_a_version(project: dict) -> None:
    cfg, root = _cfg("m-evidence"), project["root"]
    v = _register(project, cfg, "good")
    test = project["splits"]["test"]
    ev = build_evidence(cfg, root, v, test)
    assert ev.version == v and ev.ids == tuple(test["id"]) and ev.labels == tuple(LABELS)
    assert ev.test_digest == split_digest(test)
    assert ev.train_ids == frozenset(project["splits"]["train"]["id"])
    assert ev.baseline is not None and ev.baseline.macro_f1 == pytest.approx(0.55)
    assert ev.baseline.accuracy == pytest.approx(0.56)
    assert ev.serving.latency_p95_ms > 0 and 0 < ev.serving.model_size_mb < 5
    assert ev.behaviour is not None and ev.behaviour.applicable and ev.behaviour.n_cases == 18
    assert ev.probabilities.shape == (len(test), 2)
    assert np.mean(np.array(ev.predicted) == test["label"].to_numpy()) > 0.9
    assert set(ev.slices) >= {"len_le_20", "has_negation"}
    lean = build_evidence(cfg, root, v, test, train_ids=frozenset({"x"}), measure=False)
    assert lean.train_ids == {"x"} and lean.serving is None and lean.baseline is None
    assert lean.predicted == ev.predicted


# --------------------------------------------------------------------------- gate
def test_first_model_promoted(project: dict) -> None:
    cfg, root, c = _cfg("m-first"), project["root"], project["client"]
    v = _register(project, cfg, "good")
    assert R.current_aliases(c, "m-first") == {"challenger": v}
    outcome = run_gate(cfg, root)
    d = outcome.decision
    assert outcome.promoted and d.promote and d.champion is None and d.note == FIRST_MODEL_NOTE
    assert R.current_aliases(c, "m-first") == {"champion": v}  # challenger alias consumed
    crit = {x.name: x for x in d.criteria}
    assert crit["accuracy_floor"].value > 0.9  # the toy task is learnable
    assert crit["beats_baseline"].passed and crit["latency_p95_ms"].value > 0
    assert 0 < crit["model_size_mb"].value < 5
    mv = c.get_model_version("m-first", v)
    assert mv.tags[R.GATE_RESULT_TAG] == "pass" and mv.tags[R.GATE_DECISION_TAG] == d.id
    assert json.loads(mv.tags["textclf.alias.champion"])["via"] == "gate"
    events = _assert_history_consistent(project, cfg)
    assert [(e.action, e.alias) for e in events] == [
        ("register", None),
        ("set_alias", "challenger"),
        ("begin", None),
        ("set_alias", "champion"),
        ("remove_alias", "challenger"),
        ("commit", None),
    ]
    assert events[3].decision_id == d.id and events[3].via == "gate" and "@" in events[3].actor
    j, md = outcome.record_paths
    record = json.loads(j.read_text(encoding="utf-8"))
    assert record["outcome"]["promoted"] is True and record["decision"]["id"] == d.id
    assert "PROMOTED" in md.read_text(encoding="utf-8")
    logged = {a.path for a in c.list_artifacts(project["runs"]["good"], "gate")}
    assert {f"gate/{j.name}", f"gate/{md.name}"} <= logged


def test_random_candidate_rejected_vs_good_champion(project: dict) -> None:
    cfg, root, c = _cfg("m-bad"), project["root"], project["client"]
    v1 = _register(project, cfg, "good")
    assert run_gate(cfg, root).promoted
    v2 = _register(project, cfg, "random")
    outcome = run_gate(cfg, root)
    d = outcome.decision
    assert not outcome.promoted and not d.promote and d.champion == v1 and d.challenger == v2
    failed = {x.name for x in d.failed}
    assert {"non_regression", "not_significantly_worse"} <= failed
    assert d.reason.startswith("rejected: macro-F1")
    assert R.current_aliases(c, "m-bad") == {"champion": v1, "challenger": v2}
    assert c.get_model_version("m-bad", v2).tags[R.GATE_RESULT_TAG] == "fail"
    assert any("training data unknown" in n for n in outcome.notes)
    _assert_history_consistent(project, cfg)
    # A manual promotion without --force runs the same gate and refuses.
    with pytest.raises(GateRejected, match="did not pass the gate"):
        promote(cfg, root, v2, reason="try it")
    assert R.alias_version(c, "m-bad", "champion") == v1


def test_label_shuffled_candidate_rejected(project: dict) -> None:
    cfg, root, c = _cfg("m-shuffled"), project["root"], project["client"]
    v1 = _register(project, cfg, "good")
    assert run_gate(cfg, root).promoted
    _register(project, cfg, "shuffled")
    outcome = run_gate(cfg, root)
    assert not outcome.promoted, outcome.decision.reason
    failed = {x.name for x in outcome.decision.failed}
    assert {"accuracy_floor", "non_regression", "not_significantly_worse"} <= failed, failed
    assert R.alias_version(c, "m-shuffled", "champion") == v1


def test_identical_candidate_and_champion_dry_run(project: dict) -> None:
    root, c = project["root"], project["client"]
    cfg = _cfg("m-same", min_improvement=0.01)
    v1 = _register(project, cfg, "good")
    assert run_gate(cfg, root).promoted
    v2 = _register(project, cfg, "copy")
    outcome = run_gate(cfg, root)
    d = outcome.decision
    assert d.challenger == v2 and d.champion == v1
    assert not outcome.promoted and [x.name for x in d.failed] == ["significant_improvement"]
    assert d.comparison.delta == 0.0 and d.comparison.mcnemar.b == d.comparison.mcnemar.c == 0
    assert d.comparison.n_excluded_challenger_train == N_LEAK and d.comparison.n_excluded_champion_train == 0
    assert R.alias_version(c, "m-same", "champion") == v1

    # Gate the champion itself: never promoted again, whatever min_improvement is.
    for cfg_ in (cfg, _cfg("m-same", min_improvement=0.0)):
        before = R.history(cfg_, root)
        dry = run_gate(cfg_, root, version=v1, dry_run=True)
        assert (
            not dry.promoted and dry.dry_run and "already_champion" in {x.name for x in dry.decision.failed}
        )
        assert dry.decision.reason.startswith(f"rejected: v{v1} is already the champion")
        assert dry.record_paths[0].name.endswith(".dry-run.json")
        assert R.history(cfg_, root) == before  # a dry run moves nothing
    assert "would pass the other criteria" in dry.decision.reason  # min_improvement=0: identical passes


def test_dry_run_does_not_register(project: dict) -> None:
    cfg, root, c = _cfg("m-dry"), project["root"], project["client"]
    outcome = run_gate(cfg, root, run_id=project["runs"]["good"], dry_run=True)
    assert outcome.version is None and outcome.decision.promote and not outcome.promoted
    assert "WOULD PROMOTE" in outcome.record_paths[1].read_text(encoding="utf-8")
    assert c.search_model_versions("name='m-dry'") == []


def test_forced_promote_and_rollback(project: dict) -> None:
    cfg, root, c = _cfg("m-roll"), project["root"], project["client"]
    v1 = _register(project, cfg, "good")
    assert run_gate(cfg, root).promoted
    v2 = _register(project, cfg, "random")
    move = promote(cfg, root, v2, force=True, reason="hotfix drill")
    assert move.champion == v2 and move.replaced == v1
    assert R.current_aliases(c, "m-roll") == {"champion": v2, "previous-champion": v1}
    assert c.get_model_version("m-roll", v2).tags[R.FORCED_TAG] == "true"

    back = rollback(cfg, root, reason="v2 misbehaves in production")
    assert back.champion == v1
    assert R.current_aliases(c, "m-roll") == {"champion": v1, "previous-champion": v2}
    events = _assert_history_consistent(project, cfg)
    rb = [e for e in events if e.via == "rollback" and e.action == "set_alias"]
    assert [(e.alias, e.version, e.previous) for e in rb] == [
        ("champion", v1, v2),
        ("previous-champion", v2, v1),
    ]
    assert all(e.reason == "v2 misbehaves in production" for e in rb)
    forced = [e for e in events if e.via == "manual" and e.alias == "champion"]
    assert forced and forced[0].reason == "forced: hotfix drill"
    text = R.render_history(events)
    assert "@champion: v2 -> v1" in text and "rollback" in text
    st = R.status(cfg, root)
    assert not st.warnings and [r.version for r in st.rows] == [v2, v1]
    assert "(forced)" in R.render_status(st) and "@champion" in R.render_status(st)
    with pytest.raises(R.RegistryError, match="needs a reason"):
        rollback(cfg, root, reason=" ")


@pytest.mark.parametrize(("step", "champion_after_crash"), [("after_previous", "1"), ("after_champion", "2")])
def test_crash_between_alias_moves(project: dict, step: str, champion_after_crash: str) -> None:
    name = f"m-crash-{step}"
    cfg, root, c = _cfg(name), project["root"], project["client"]
    assert _register(project, cfg, "good") == "1"
    assert run_gate(cfg, root).promoted
    assert _register(project, cfg, "copy") == "2"  # identical: passes with min_improvement=0

    def crash(at: str) -> None:
        if at == step:
            raise RuntimeError(f"simulated crash at {at}")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_gate(cfg, root, _fault=crash)
    aliases = R.current_aliases(c, name)
    assert aliases["champion"] == champion_after_crash  # a vetted version, never nothing
    assert aliases["previous-champion"] == "1"
    events = _assert_history_consistent(project, cfg)  # every move that happened is recorded
    assert len(R.open_transactions(events)) == 1
    assert any("interrupted" in w for w in R.status(cfg, root).warnings)
    record = json.loads((root / "artifacts/reports/gate/latest.json").read_text(encoding="utf-8"))
    assert record["outcome"]["status"] == "INTERRUPTED"

    # The next writer closes the interrupted transaction; the gate then finishes the job.
    outcome = run_gate(cfg, root, version="2")
    if champion_after_crash == "2":
        assert not outcome.promoted and "already the champion" in outcome.decision.reason
    else:
        assert outcome.promoted
    events = _assert_history_consistent(project, cfg)
    assert R.open_transactions(events) == []
    assert any(e.action == "recover" for e in events)
    assert R.current_aliases(c, name)["champion"] == "2"
    assert not R.status(cfg, root).warnings or champion_after_crash == "2"


def test_promotion_is_compare_and_set(project: dict) -> None:
    cfg, root, c = _cfg("m-cas"), project["root"], project["client"]
    v1 = _register(project, cfg, "good")
    v2 = _register(project, cfg, "copy")
    R.promote_version(cfg, root, v1, expected_champion=None, via="manual", reason="first")
    with pytest.raises(R.PromotionConflict, match="changed from none to v1"):
        R.promote_version(cfg, root, v2, expected_champion=None, via="gate", reason="stale decision")
    assert R.alias_version(c, "m-cas", "champion") == v1


def test_lease_lock_excludes_a_second_writer(project: dict) -> None:
    cfg = _cfg("m-lease", registry={"lock": "lease", "lease_settle_s": 0.05, "lock_timeout_s": 1.0})
    root, c = project["root"], project["client"]
    entered, release = threading.Event(), threading.Event()

    def holder() -> None:
        with R.registry_writer(cfg, root):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert entered.wait(10)
    assert json.loads(c.get_registered_model("m-lease").tags[R.LEASE_TAG])["actor"] == R.current_actor()
    start = time.monotonic()
    with pytest.raises(R.RegistryBusy, match="leased by"):
        with R.registry_writer(cfg, root):
            pass
    assert time.monotonic() - start >= 1.0
    release.set()
    t.join(10)
    assert R.LEASE_TAG not in c.get_registered_model("m-lease").tags
    with R.registry_writer(cfg, root) as w:  # free again
        assert w.aliases() == {}


_WORKER = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from textclf.config import config_from_dict
from textclf.gate.promote import run_gate
from textclf.gate.registry import PromotionConflict

cfg_path, root, version, barrier = sys.argv[1:5]
cfg = config_from_dict(json.loads(Path(cfg_path).read_text()))
def wait_for_both(decision):
    Path(barrier, f"ready-{version}").touch()
    deadline = time.time() + 300
    while len(list(Path(barrier).glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
try:
    out = run_gate(cfg, Path(root), version=version, _after_decision=wait_for_both)
    print(json.dumps({"version": version, "decided": out.decision.promote, "promoted": out.promoted}))
except PromotionConflict as err:
    print(json.dumps({"version": version, "decided": True, "promoted": False, "conflict": str(err)}))
"""


@pytest.mark.integration
def test_two_concurrent_gate_runs_promote_once(project: dict, tmp_path: Path) -> None:
    cfg, root, c = _cfg("m-race"), project["root"], project["client"]
    versions = [_register(project, cfg, "good"), _register(project, cfg, "copy")]
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json")), encoding="utf-8")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(cfg_path), str(root), v, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in versions
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["decided"] for r in results)  # both decided to promote (no champion yet) ...
    winners = [r["version"] for r in results if r["promoted"]]
    assert len(winners) == 1  # ... but only one did
    loser = next(r for r in results if not r["promoted"])
    assert "changed from none to v" in loser["conflict"]
    assert R.alias_version(c, "m-race", "champion") == winners[0]
    events = _assert_history_consistent(project, cfg)
    assert [e.version for e in events if e.action == "commit"] == winners

"""Registry layer of the promotion gate against a real MLflow SQLite store in a temp project.

Tiny BERT classifiers on a toy separable task: a "good" one (trained a few steps: the label is
given by marker characters), an identical copy logged as another run, and an untrained one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
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

from projects import params, section  # noqa: E402
from textclf import runs  # noqa: E402
from textclf.config import Config, apply_overrides  # noqa: E402
from textclf.errors import TextclfError  # noqa: E402
from textclf.gate.decision import FIRST_MODEL_NOTE  # noqa: E402
from textclf.gate.promotion import GateRejected, promote, rollback, run_gate  # noqa: E402
from textclf.model.predictor import Preprocessing  # noqa: E402
from textclf.tracking import registry as R  # noqa: E402
from textclf.tracking.pyfunc import log_pyfunc_model  # noqa: E402
from textclf.tracking.run import log_model  # noqa: E402
from textclf.tracking.store import client, configure_mlflow  # noqa: E402
from textclf.train.blend import fit_ngram  # noqa: E402

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
    Preprocessing(normalize=section("prepare.normalize"), max_length=48).save(model_dir)


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
        "infra_validation": {"enabled": False},  # on in the tests that serve a Bento
    }
    return apply_overrides(params(), {"mlflow": {"registered_model": name}, "gate": {**lenient, **gate}})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gateproj")
    shutil.copy(repo_root / "bentofile.yaml", root)  # the infra-validation tests build Bentos here
    shutil.copytree(repo_root / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
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

    cfg = params()
    examples = splits["test"]["text"].head(3).tolist()

    def log(model_dir: Path, name: str, train_ids: list[str] | None, variant: bool = False) -> str:
        configure_mlflow(cfg, root)
        with mlflow.start_run(run_name=name) as run:
            mlflow.log_metrics({"baseline_test_macro_f1": 0.55})
            if variant:  # a compressed variant's file where evaluate logs them (no parity: served on torch)
                (root / "model.onnx").write_bytes(b"onnx bytes")
                mlflow.log_artifact(str(root / "model.onnx"), "eval/variants")
            if train_ids is None:  # a model whose training data is unknown
                log_pyfunc_model(model_dir, examples, batch_size=cfg.train.eval_batch_size)
            else:
                log_model(model_dir, train_ids, examples, cfg.train.eval_batch_size)
        return run.info.run_id

    # model.family ngram, fit on the same train split: a candidate from another family
    ngram = root / "models" / "ngram"
    fit_ngram(cfg.evaluate.baseline, cfg.prepare.normalize, LABELS, ngram, splits["train"], splits["val"])
    train_ids = splits["train"]["id"].tolist()
    runs = {
        "ngram": log(ngram, "ngram", train_ids),
        "good": log(good, "good", train_ids),
        "copy": log(good, "copy", train_ids + splits["test"]["id"].head(N_LEAK).tolist()),
        "random": log(rand, "random", None),
        "shuffled": log(shuffled, "shuffled", train_ids),
        "variant": log(shuffled, "variant", train_ids, variant=True),
    }
    return {"root": root, "runs": runs, "splits": splits, "client": client(cfg, root)}


def _model_uri(c, run_id: str) -> str:
    return f"models:/{c.get_run(run_id).outputs.model_outputs[0].model_id}"


def _register(p: dict, cfg: Config, which: str) -> str:
    run_id = p["runs"][which]
    return R.register(p["client"], cfg.mlflow.registered_model, run_id, _model_uri(p["client"], run_id))


def _aliases(p: dict, name: str) -> dict[str, str]:
    return R.aliases(p["client"], name)


# --------------------------------------------------------------------------- evidence
def test_score_version_on_the_current_split(project: dict) -> None:
    from textclf.data.prepare import split_digest
    from textclf.gate.evidence import score_version
    from textclf.serving.release import ServedModel

    cfg, c = _cfg("m-evidence"), project["client"]
    v = _register(project, cfg, "good")
    test = project["splits"]["test"]
    served = ServedModel.load(c, "m-evidence", v, "torch", project["root"] / "served")
    scored = score_version(cfg, c, served, test, split_digest(test), project["root"] / "ev", measure=True)
    ev = scored.evidence
    assert ev.version == v and ev.ids == tuple(test["id"]) and ev.labels == tuple(LABELS)
    assert ev.train_ids == frozenset(project["splits"]["train"]["id"])
    assert ev.baseline_macro_f1 == pytest.approx(0.55)
    assert ev.latency_p95_ms > 0 and 0 < ev.model_size_mb < 5
    assert ev.behaviour is not None and ev.behaviour.n_cases == 18
    assert np.mean(np.array(ev.predicted) == test["label"].to_numpy()) > 0.9
    assert ev.slices["has_negation"] == {
        i for i, t in zip(test["id"], test["text"], strict=True) if "不" in t
    }
    lean = score_version(cfg, c, served, test, split_digest(test), project["root"] / "ev2", measure=False)
    assert lean.evidence.latency_p95_ms is None and lean.evidence.predicted == ev.predicted


# --------------------------------------------------------------------------- gate
def test_first_model_promoted(project: dict) -> None:
    cfg, root, c = _cfg("m-first"), project["root"], project["client"]
    v = _register(project, cfg, "good")
    assert _aliases(project, "m-first") == {"challenger": v}
    outcome = run_gate(cfg, root)
    d = outcome.decision
    assert outcome.promoted and d.promote and d.champion is None and d.note == FIRST_MODEL_NOTE
    assert _aliases(project, "m-first") == {"champion": v}  # challenger alias consumed
    crit = {x.name: x for x in d.criteria}
    assert crit["accuracy_floor"].value > 0.9  # the toy task is learnable
    assert crit["vs_baseline"].passed and crit["latency_p95_ms"].value > 0
    mv = c.get_model_version("m-first", v)
    assert mv.tags[R.GATE_RESULT] == "pass" and mv.tags[R.GATE_DECISION] == d.id
    assert mv.tags["textclf.promoted_via"] == "gate" and mv.tags["textclf.replaced"] == "none"
    assert d.reason in mv.description and "decision record" in mv.description
    record = json.loads(outcome.record.read_text(encoding="utf-8"))
    assert record["decision"]["id"] == d.id and "promoted" in record["outcome"]
    assert "PROMOTED" in outcome.record.with_suffix(".md").read_text(encoding="utf-8")
    logged = {a.path for a in c.list_artifacts(project["runs"]["good"], "gate")}
    assert {f"gate/{outcome.record.name}", f"gate/{outcome.record.with_suffix('.md').name}"} <= logged
    assert c.get_run(project["runs"]["good"]).data.tags[R.GATE_DECISION] == d.id


def test_random_candidate_rejected_vs_good_champion(project: dict) -> None:
    cfg, root, c = _cfg("m-bad"), project["root"], project["client"]
    v1 = _register(project, cfg, "good")
    assert run_gate(cfg, root).promoted
    v2 = _register(project, cfg, "random")
    outcome = run_gate(cfg, root)
    d = outcome.decision
    assert not outcome.promoted and d.champion == v1 and d.challenger == v2
    assert {"non_regression", "not_significantly_worse"} <= {x.name for x in d.failed}
    assert d.reason.startswith("rejected: macro-F1")
    assert _aliases(project, "m-bad") == {"champion": v1, "challenger": v2}
    assert c.get_model_version("m-bad", v2).tags[R.GATE_RESULT] == "fail"
    assert any("training data is unknown" in n for n in outcome.notes)
    with pytest.raises(GateRejected, match="did not pass the gate"):  # a manual promotion runs the gate
        promote(cfg, root, v2, force=False, reason="try it")
    assert R.alias(c, "m-bad", "champion") == v1


def test_an_ngram_candidate_is_judged_against_an_encoder_champion(project: dict) -> None:
    """Families meet in the gate: the encoder champion and the n-gram challenger are scored on the same
    test ids by the same code, and the challenger's served directory runs on scikit-learn."""
    from textclf.serving.release import ServedModel

    cfg, root, c = _cfg("m-family"), project["root"], project["client"]
    v1 = _register(project, cfg, "good")
    assert run_gate(cfg, root).promoted
    v2 = _register(project, cfg, "ngram")
    outcome = run_gate(cfg, root, dry_run=True)
    d = outcome.decision
    assert d.champion == v1 and d.challenger == v2 and d.comparison is not None
    assert d.comparison.n_compared == len(project["splits"]["test"])
    crit = {x.name: x for x in d.criteria}
    assert crit["accuracy_floor"].value > 0.9 and crit["latency_p95_ms"].value > 0  # the toy task, learnt
    served = ServedModel.load(c, "m-family", v2, cfg.serve.runtime, root / "served-ngram")
    assert served.predictor.family.name == "ngram" and served.predictor.runtime == "sklearn"
    card = (served.model_dir / "README.md").read_text(encoding="utf-8")
    assert "Model family: ngram: char 1-2-gram TF-IDF" in card and "Served runtime: sklearn" in card


def test_label_shuffled_candidate_rejected(project: dict) -> None:
    cfg, root, c = _cfg("m-shuffled"), project["root"], project["client"]
    v1 = _register(project, cfg, "good")
    assert run_gate(cfg, root).promoted
    _register(project, cfg, "shuffled")
    outcome = run_gate(cfg, root)
    assert not outcome.promoted, outcome.decision.reason
    failed = {x.name for x in outcome.decision.failed}
    assert {"accuracy_floor", "non_regression", "not_significantly_worse"} <= failed, failed
    assert R.alias(c, "m-shuffled", "champion") == v1


def test_identical_candidate_and_the_champion_itself(project: dict) -> None:
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
    assert d.comparison.n_excluded == N_LEAK  # the copy "trained" on 10 test rows: not compared
    assert R.alias(c, "m-same", "champion") == v1
    for cfg_ in (cfg, _cfg("m-same", min_improvement=0.0)):  # the champion is never promoted again
        dry = run_gate(cfg_, root, version=v1, dry_run=True)
        assert not dry.promoted and "already_champion" in {x.name for x in dry.decision.failed}
        assert dry.decision.reason.startswith(f"rejected: v{v1} is already the champion")
        assert dry.record.name.endswith(".dry-run.json")
    assert "would pass the other criteria" in dry.decision.reason
    assert _aliases(project, "m-same") == {"champion": v1, "challenger": v2}  # a dry run moves nothing


def test_dry_run_moves_and_registers_nothing(project: dict) -> None:
    cfg, root, c = _cfg("m-dry"), project["root"], project["client"]
    with pytest.raises(TextclfError, match="not registered"):
        run_gate(cfg, root, run_id=project["runs"]["good"], dry_run=True)
    v = _register(project, cfg, "good")
    outcome = run_gate(cfg, root, dry_run=True)
    assert outcome.decision.promote and not outcome.promoted and "would be promoted" in outcome.message
    assert _aliases(project, "m-dry") == {"challenger": v}
    assert R.GATE_RESULT not in c.get_model_version("m-dry", v).tags


def test_forced_promote_rollback_and_history(project: dict) -> None:
    cfg, root, c = _cfg("m-roll"), project["root"], project["client"]
    v1 = _register(project, cfg, "good")
    assert run_gate(cfg, root).promoted
    v2 = _register(project, cfg, "random")
    move = promote(cfg, root, v2, force=True, reason="hotfix drill")
    assert (move.champion, move.replaced, move.via) == (v2, v1, "forced")
    assert _aliases(project, "m-roll") == {"champion": v2, "previous-champion": v1}
    back = rollback(cfg, root, reason="v2 misbehaves in production")
    assert str(back) == "m-roll @champion: v2 → v1 (rollback: v2 misbehaves in production)"
    assert _aliases(project, "m-roll") == {"champion": v1, "previous-champion": v2}
    tags = c.get_model_version("m-roll", v2).tags
    assert tags["textclf.replaced_by"] == v1 and "textclf.demoted_at" in tags
    events = [(e["version"], e["event"]) for e in R.history(c, "m-roll")]
    assert ("1", "gate pass") in events and ("2", "demoted") in events
    assert events[-1] == ("1", "champion (replaced v2)")  # the rollback, newest last
    rows = R.versions(c, "m-roll")
    assert [(r["version"], r["aliases"]) for r in rows] == [("2", "@previous-champion"), ("1", "@champion")]
    with pytest.raises(TextclfError, match="needs a reason"):
        rollback(cfg, root, reason=" ")


def test_a_model_changed_after_the_gate_is_refused(project: dict, tmp_path: Path) -> None:
    """The gate seals every file of a version (its model directory and its run's variant files: sha256
    by path in a version tag); a file changed in the artifact store afterwards makes packaging and a
    rollback to it fail naming the file, and nothing moves."""
    from textclf.serving.release import lineage_labels, served_model_dir

    cfg, root, c = _cfg("m-digest"), project["root"], project["client"]
    v1 = _register(project, cfg, "variant")
    run_id = project["runs"]["variant"]
    c.set_tag(run_id, "textclf.git_commit", "cafe")
    promote(cfg, root, v1, force=True, reason="seal it")
    c.set_tag(run_id, "textclf.git_commit", "forged")  # run tags stay the trainer's to write
    assert lineage_labels(c, "m-digest", v1)["git_commit"] == "cafe"  # packaging labels the snapshot
    sealed = json.loads(c.get_model_version("m-digest", v1).tags[R.SEAL_TAG])
    assert {"model/model.safetensors", "model/textclf_preprocessing.json", "variants/model.onnx"} <= set(
        sealed
    )
    v2 = _register(project, cfg, "random")
    promote(cfg, root, v2, force=True, reason="v1 becomes previous-champion")
    mv = c.get_model_version("m-digest", v1)
    store = Path(
        c.get_logged_model(mv.source.removeprefix("models:/")).artifact_location.removeprefix("file://")
    )
    run_store = Path(c.get_run(mv.run_id).info.artifact_uri.removeprefix("file://"))
    for name, victim in (
        ("model/model.safetensors", next(store.rglob("model.safetensors"))),
        ("variants/model.onnx", run_store / "eval" / "variants" / "model.onnx"),
    ):
        original = victim.read_bytes()
        try:
            victim.write_bytes(original[:-4] + b"evil")
            with pytest.raises(R.DigestMismatch, match=re.escape(f"changed ['{name}']")):
                served_model_dir(c, "m-digest", v1, "torch", tmp_path / name / "pkg")
            with pytest.raises(R.DigestMismatch, match=re.escape(name)):
                rollback(cfg, root, reason="back to the tampered one")
            assert _aliases(project, "m-digest") == {"champion": v2, "previous-champion": v1}
        finally:
            victim.write_bytes(original)
    served = served_model_dir(c, "m-digest", v1, "torch", tmp_path / "ok")
    card = (served / "README.md").read_text()  # the card that ships carries this version's numbers
    assert f"## Evaluation of m-digest v{v1}" in card and "Served runtime: torch" in card
    assert "| TF-IDF baseline |" in card and "Gate: " in card


def _champion_random_after_good(project: dict, name: str) -> Config:
    """v1 (good) replaced by v2 (random, forced): @champion v2, @previous-champion v1; v3 (copy) is
    @challenger and passes the gate against v2."""
    cfg, c = _cfg(name), project["client"]
    assert [_register(project, cfg, w) for w in ("good", "random")] == ["1", "2"]
    R.move_champion(c, name, "1", expected=None, via="manual", reason="setup")
    R.move_champion(c, name, "2", expected="1", via="forced", reason="setup")
    assert _register(project, cfg, "copy") == "3"
    return cfg


def _fail_on(
    monkeypatch: pytest.MonkeyPatch, method: str, key: str, exc: type[BaseException] = RuntimeError
) -> None:
    """Test-side fault injection: the MlflowClient write ``method`` raises once for alias/tag ``key``."""
    from mlflow.tracking import MlflowClient

    real, fired = getattr(MlflowClient, method), []
    at = 1 if method == "set_model_version_tag" else 0  # (version, key, value) or (alias[, version])

    def failing(self, model, *args):  # noqa: ANN001, ANN002, ANN202
        if args[at] == key and not fired:
            fired.append(key)
            raise exc(f"simulated failure: {method} {key}")
        return real(self, model, *args)

    monkeypatch.setattr(MlflowClient, method, failing)


@pytest.mark.parametrize(
    ("method", "key", "moved", "exc"),
    [
        ("set_model_version_tag", R.PENDING, False, RuntimeError),  # before any alias moves
        ("set_registered_model_alias", R.CHAMPION, False, RuntimeError),  # the commit point itself
        ("delete_registered_model_alias", R.CHALLENGER, True, RuntimeError),  # after it
        ("set_model_version_tag", "textclf.promoted_at", True, RuntimeError),  # after it: the bookkeeping
        # a lost lock lease: Prefect cancels the holder with a CancelledError (a BaseException)
        ("set_model_version_tag", "textclf.promoted_via", True, asyncio.CancelledError),
    ],
    ids=["tag-before", "champion-write", "challenger-delete", "tag-after", "lease-lost-after"],
)
def test_gate_fault_outcome_is_what_the_registry_says_and_the_retry_finishes(
    project: dict, monkeypatch: pytest.MonkeyPatch, method: str, key: str, moved: bool, exc: type
) -> None:
    name = f"m-fault-{method[:3]}-{key.rsplit('.', 1)[-1]}"
    cfg, root, c = _champion_random_after_good(project, name), project["root"], project["client"]
    _fail_on(monkeypatch, method, key, exc)
    if moved:  # @champion moved: promoted, and the failure after it is logged, not the outcome
        outcome = run_gate(cfg, root)
        assert outcome.promoted and "unfinished" in outcome.message, outcome.message
    else:
        with pytest.raises(RuntimeError, match="simulated failure"):
            run_gate(cfg, root)
    monkeypatch.undo()
    assert R.alias(c, name, "champion") == ("3" if moved else "2")
    latest = json.loads((root / cfg.paths.reports / "gate" / "latest.json").read_text(encoding="utf-8"))
    assert latest["candidate"] == "3" and latest["outcome"].startswith(
        "v3 promoted to @champion (was v2)" if moved else "v3 not promoted: simulated failure"
    ), latest["outcome"]
    if moved:  # an unfinished promotion stays marked: a re-run of the flow gates it again
        assert R.pending(c, name, "3") and not runs.judged(cfg, root, project["runs"]["copy"])

    retry = run_gate(cfg, root)  # the task's retry: the candidate is @challenger, else @champion
    assert retry.promoted and retry.version == "3" and retry.decision.champion == "2", retry.message
    assert _aliases(project, name) == {"champion": "3", "previous-champion": "2"}
    tags = c.get_model_version(name, "3").tags
    assert tags["textclf.promoted_via"] == "gate" and tags[R.REPLACED] == "2" and R.PENDING not in tags
    assert tags[R.GATE_RESULT] == "pass" and "textclf.promoted_at" in tags
    assert c.get_model_version(name, "2").tags["textclf.replaced_by"] == "3"
    assert runs.judged(cfg, root, project["runs"]["copy"])
    again = run_gate(cfg, root, version="3")  # finished: now it is just the champion again
    assert not again.promoted and "already the champion" in again.decision.reason


def test_rollback_reaches_the_replaced_version_when_previous_champion_was_lost(
    project: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure between the @previous-champion and @champion writes leaves @previous-champion on the
    champion itself: the rollback target is the version the champion's ``replaced`` tag names."""
    name = "m-lost-previous"
    cfg, root, c = _champion_random_after_good(project, name), project["root"], project["client"]
    _fail_on(monkeypatch, "set_registered_model_alias", R.CHAMPION)
    with pytest.raises(RuntimeError, match="simulated failure"):
        R.move_champion(c, name, "3", expected="2", via="gate", reason="fails half way")
    monkeypatch.undo()
    assert _aliases(project, name) == {"champion": "2", "previous-champion": "2", "challenger": "3"}
    back = rollback(cfg, root, reason="v2 misbehaves")
    assert (back.champion, back.replaced) == ("1", "2")
    assert _aliases(project, name) == {"champion": "1", "previous-champion": "2", "challenger": "3"}
    c.delete_registered_model_alias(name, "previous-champion")  # lost outright: the tag still knows
    assert rollback(cfg, root, reason="and back").champion == "2"


def test_promotion_is_compare_and_set(project: dict) -> None:
    cfg, c = _cfg("m-cas"), project["client"]
    v1, v2 = _register(project, cfg, "good"), _register(project, cfg, "copy")
    R.move_champion(c, "m-cas", v1, expected=None, via="manual", reason="first")
    with pytest.raises(R.PromotionConflict, match="changed from none to v1"):
        R.move_champion(c, "m-cas", v2, expected=None, via="gate", reason="stale decision")
    assert R.alias(c, "m-cas", "champion") == v1


@pytest.fixture(scope="module")
def prefect_api():  # noqa: ANN201
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.mark.parametrize(
    "limit", [{"limit": 5, "active": True}, {"limit": 1, "active": False}], ids=["limit-5", "inactive"]
)
def test_gate_refuses_a_prefect_lock_that_excludes_nobody(project: dict, prefect_api, limit: dict) -> None:  # noqa: ANN001
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate

    name = f"m-gcl-{limit['limit']}"
    cfg, root = _cfg(name, registry={"lock": "prefect", "lock_timeout_s": 10}), project["root"]
    v = _register(project, cfg, "good")
    gcl = f"textclf-registry-{name}"
    with get_client(sync_client=True) as client:  # somebody widened or disabled the lock's limit
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=gcl, **limit))
    with pytest.raises(R.RegistryError, match=f"{gcl} is a Prefect concurrency limit .* must be limit 1"):
        run_gate(cfg, root)
    assert _aliases(project, name) == {"challenger": v}  # nothing moved
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(gcl, GlobalConcurrencyLimitUpdate(limit=1, active=True))
    promote(cfg, root, v, force=True, reason="the lock excludes again")
    assert _aliases(project, name) == {"champion": v}


def test_file_lock_excludes_a_second_writer(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = params().gate.registry.model_copy(update={"lock_timeout_s": 0.5})
    entered, release = threading.Event(), threading.Event()

    def holder() -> None:
        with R.registry_lock(uri, "m", rc):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert entered.wait(10)
    start = time.monotonic()
    with pytest.raises(R.RegistryError, match="another promotion holds"):
        with R.registry_lock(uri, "m", rc):
            pass
    assert time.monotonic() - start >= 0.5
    release.set()
    t.join(10)
    with R.registry_lock(uri, "m", rc):  # free again
        pass


# --------------------------------------------------------------------------- infra validation
INFRA = {"enabled": True, "golden_texts": 40, "concurrency": 4, "start_timeout_s": 120}


def _tamper_store(monkeypatch: pytest.MonkeyPatch, damage, stored: bool = True) -> None:  # noqa: ANN001
    """Test-side fault injection: damage the model directory once it is in the BentoML model store
    (``stored``: the service's own file check refuses it), or the served directory just before it is
    imported (after the gate loaded its offline predictor: the Bento is consistent but differs)."""
    import bentoml

    from textclf.serving import release

    real = release.import_model_dir  # where packaging calls it

    def tampered(model_dir, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not stored:
            damage(Path(model_dir))
        tag = real(model_dir, *args, **kwargs)
        if stored:
            damage(Path(bentoml.models.get(tag).path))
        return tag

    monkeypatch.setattr(release, "import_model_dir", tampered)


def test_infra_validation_serves_the_bento_before_promotion(
    project: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from textclf.model.predictor import Predictor
    from textclf.serving import release

    built: list[tuple[str, Path]] = []  # (version, served directory) per build
    loaded: list[Path] = []  # model directories a Predictor was loaded from, in this process
    real_served, real_init = release.served_model_dir, Predictor.__init__

    def served_model_dir(c, model, version, runtime, dst):  # noqa: ANN001, ANN202
        built.append((version, out := real_served(c, model, version, runtime, dst)))
        return out

    def init(self, model_dir, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        loaded.append(Path(model_dir))
        real_init(self, model_dir, *args, **kwargs)

    monkeypatch.setattr(release, "served_model_dir", served_model_dir)
    monkeypatch.setattr(Predictor, "__init__", init)
    cfg, root, c = _cfg("m-infra", infra_validation=INFRA), project["root"], project["client"]
    v = _register(project, cfg, "good")
    outcome = run_gate(cfg, root)
    # one candidate per gate run: judged, served and packaged from one directory and one predictor
    assert [d for version, d in built if version == v] == [built[0][1]] and loaded.count(built[0][1]) == 1
    row = {x.name: x for x in outcome.decision.criteria}["infra_validation"]
    assert outcome.promoted and row.passed and row.value >= 0.999, row.detail
    assert "answered 200" in row.detail and "lineage matches" in row.detail
    assert outcome.bento and c.get_model_version("m-infra", v).tags[R.BENTO_TAG] == outcome.bento


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: (d / "model.safetensors").write_bytes(b"corrupted"), "did not start serving"),
        (
            lambda d: (d / "textclf_preprocessing.json").write_text(
                json.dumps(
                    {
                        "normalize": {
                            "nfkc": True,
                            "strip_invisible": True,
                            "collapse_whitespace": True,
                            "lowercase": False,
                        },
                        "max_length": 3,
                    }
                )
            ),
            "agree with offline",
        ),
    ],
    ids=["corrupted-model", "different-preprocessing"],
)
def test_infra_validation_failure_keeps_the_champion(
    project: dict,
    monkeypatch: pytest.MonkeyPatch,
    damage,
    expected: str,  # noqa: ANN001
) -> None:
    import bentoml

    name = f"m-infra-{len(expected)}"
    # bentoml serve restarts a crashing worker rather than exiting: the failure shows as the start
    # timeout, shortened here (a good Bento is ready in ~10 s)
    infra = {**INFRA, "start_timeout_s": 40} if "start" in expected else INFRA
    cfg, root, c = _cfg(name, infra_validation=infra), project["root"], project["client"]
    v1 = _register(project, cfg, "good")
    R.move_champion(c, name, v1, expected=None, via="manual", reason="a champion to keep")
    _register(project, cfg, "copy")
    _tamper_store(monkeypatch, damage, stored=expected != "agree with offline")
    outcome = run_gate(cfg, root)
    row = {x.name: x for x in outcome.decision.criteria}["infra_validation"]
    assert not outcome.promoted and not row.passed and expected in row.detail, row.detail
    assert outcome.decision.reason.startswith("rejected: infra validation")
    assert R.alias(c, name, "champion") == v1
    assert bentoml.bentos.get(outcome.bento).info.labels["textclf_status"] == "rejected"
    record = json.loads(outcome.record.read_text())
    assert any(r["name"] == "infra_validation" and not r["passed"] for r in record["decision"]["criteria"])


_WORKER = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from textclf.config import config_from_dict
from textclf.gate import promotion as gate_run
from textclf.tracking.registry import PromotionConflict

cfg_path, root, version, barrier = sys.argv[1:5]
cfg = config_from_dict(json.loads(Path(cfg_path).read_text()))
decide = gate_run.decide

def decide_then_wait(*args):  # test-side fault injection: both processes decide, then race
    decision = decide(*args)
    Path(barrier, f"ready-{version}").touch()
    deadline = time.time() + 300
    while len(list(Path(barrier).glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return decision

gate_run.decide = decide_then_wait
try:
    out = gate_run.run_gate(cfg, Path(root), version=version)
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
    assert R.alias(c, "m-race", "champion") == winners[0]

"""Training core: tokenizer, model sources, train -> save -> Predictor, resume, labels, MLM, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers import TrainerCallback  # noqa: E402

from projects import section  # noqa: E402
from textclf.config import apply_overrides, load_config  # noqa: E402
from textclf.errors import DataError, ModelSourceError  # noqa: E402
from textclf.model.build import build_classifier, build_tokenizer  # noqa: E402
from textclf.model.predictor import PREPROCESSING_FILE, Predictor  # noqa: E402
from textclf.model.tokenizer import UNK, build_char_tokenizer  # noqa: E402
from textclf.train.data import training_fingerprint  # noqa: E402
from textclf.train.trainer import (  # noqa: E402
    FINGERPRINT_FILE,
    ShuffledLengthGroups,
    effective_config,
    prepare_checkpoint_dir,
    train_model,
)
from train_fixtures import make_frame, tiny_config  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def frames():
    return make_frame(200, seed=1), make_frame(40, seed=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, frames):
    out = tmp_path_factory.mktemp("trained")
    train, val = frames
    result = train_model(tiny_config(), train, val, out / "model", out / "ckpt")
    object.__setattr__(result, "model_dir", out / "model")  # where the test asked it to save
    return result


class _CrashAt(TrainerCallback):
    """A fault injected by the test: the process "dies" once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step >= self.step:
            raise RuntimeError(f"simulated crash after {state.global_step} steps")


class _StepAtStart(TrainerCallback):
    """Records the global step when training (re)starts."""

    def __init__(self) -> None:
        self.start_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.start_step = state.global_step


# --------------------------------------------------------------------------- tokenizer
def test_char_tokenizer_has_no_unk_for_train_chars_and_reloads(tmp_path, frames):
    from transformers import AutoTokenizer

    train, _ = frames
    cfg = tiny_config().model
    tok = build_char_tokenizer(train["text"], cfg.tokenizer, cfg.max_length)
    text = train["text"].iloc[0] + " 好"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids)[0] == "[CLS]" and tok.convert_ids_to_tokens(ids)[-1] == "[SEP]"
    assert len(ids) == len(text.replace(" ", "")) + 2  # one token per non-space char
    assert tok.convert_ids_to_tokens(tok("Z")["input_ids"])[1] == UNK  # unseen char

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids
    assert (again.pad_token, again.mask_token, again.pad_token_id) == ("[PAD]", "[MASK]", 0)


def test_vocab_respects_min_frequency_and_size():

    tok = build_char_tokenizer(["aab", "ac"], section("model.tokenizer", min_frequency=2, vocab_size=16), 16)
    assert set(tok.get_vocab()) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"}
    tok = build_char_tokenizer(["aaabbc"], section("model.tokenizer", min_frequency=1, vocab_size=16 + 0), 16)
    assert len(tok) == 8


# --------------------------------------------------------------------------- model sources
def test_hub_id_offline_fails_fast_with_clear_message():
    cfg = tiny_config().model.model_copy(update={"pretrained": "some-org/not-a-cached-model"})
    start = time.perf_counter()
    with pytest.raises(ModelSourceError, match="offline"):
        build_tokenizer(cfg, ["x"])
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("path", ["./no/such/model", "/no/such/model"])
def test_missing_local_path_says_not_found(path):
    cfg = tiny_config().model.model_copy(update={"pretrained": path})
    with pytest.raises(ModelSourceError, match="model path not found"):
        build_tokenizer(cfg, ["x"])


def test_local_pretrained_dir_is_loaded(trained, frames, tmp_path):
    # A saved textclf model is a valid `pretrained` source: fine-tuning continues from its weights.
    cfg = tiny_config().model.model_copy(update={"pretrained": str(trained.model_dir)})
    tok = build_tokenizer(cfg, [])
    model = build_classifier(cfg, tok, ["a", "b", "c"])
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"
    assert len(tok) == model.config.vocab_size


# --------------------------------------------------------------------------- train -> save -> predict
def test_train_saves_standard_dir_and_predictor_round_trips(trained, frames):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, val = frames
    d = trained.model_dir
    for name in ("model.safetensors", "config.json", "tokenizer.json", PREPROCESSING_FILE):
        assert (d / name).is_file(), name
    config = json.loads((d / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    assert config["max_position_embeddings"] >= 32

    texts = val["text"].tolist()
    pred = Predictor(d, device="cpu")
    probs, _ = pred.predict_proba(texts)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForSequenceClassification.from_pretrained(d).eval()
    with torch.inference_mode():
        enc = tok(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        direct = torch.softmax(model(**enc).logits, -1).numpy()
    assert probs.argmax(1).tolist() == direct.argmax(1).tolist()
    assert abs(probs - direct).max() < 1e-4
    labels = [p.label for p in pred.predict(texts)]
    accuracy = sum(a == b for a, b in zip(labels, val["label"], strict=True)) / len(labels)
    assert accuracy >= 0.9
    assert trained.best["val_accuracy"] == pytest.approx(accuracy)


def test_each_family_round_trips_through_the_predictor(trained, frames, tmp_path):
    """Each family through fit -> save -> load (the Predictor) -> the same probabilities. encoder: the
    trained directory; ngram: fit_ngram's directory predicts what the fitted model does; blend: the
    n-gram part and the encoder's weight (chosen on val) in the encoder's directory, and the Predictor
    serves w * encoder + (1 - w) * ngram; when val picks the encoder alone (weight 1) it stays an encoder."""
    from textclf.model.blend import BLEND_FILE
    from textclf.model.family import family_of
    from textclf.model.ngram import NgramModel, train_ngram
    from textclf.train.blend import fit_blend, fit_ngram

    train, val = frames
    cfg = tiny_config()
    encoder = Predictor(trained.model_dir, device="cpu")
    assert family_of(trained.model_dir) == "encoder" and encoder.family.name == "encoder"
    texts = encoder.normalize(val["text"].tolist())
    ngram = train_ngram(
        train["text"].tolist(), train["label"].tolist(), cfg.evaluate.baseline, encoder.labels
    )

    result = fit_ngram(
        cfg.evaluate.baseline, cfg.prepare.normalize, encoder.labels, tmp_path / "n", train, val
    )
    assert family_of(tmp_path / "n") == "ngram" and result.labels == encoder.labels
    served = Predictor(tmp_path / "n", device="cpu")
    assert served.runtime == "sklearn" and served.max_length is None and served.tokenizer is None
    np.testing.assert_array_equal(served.predict_proba(texts, normalized=True)[0], ngram.predict_proba(texts))
    np.testing.assert_array_equal(
        NgramModel.load(tmp_path / "n").predict_proba(texts), ngram.predict_proba(texts)
    )
    gold = [served.labels.index(y) for y in val["label"]]
    assert result.best["val_accuracy"] == pytest.approx(
        np.mean(served.predict_proba(texts)[0].argmax(1) == gold)
    )
    with pytest.raises(ModelSourceError, match="runs only as trained"):
        Predictor(tmp_path / "n", runtime="bf16")

    for weight in (0.3, 1.0):
        model_dir = shutil.copytree(trained.model_dir, tmp_path / f"w{weight}")
        figures = fit_blend(cfg.evaluate.baseline, [weight], 16, model_dir, train, val)
        assert figures["blend_weight"] == weight
        assert (model_dir / BLEND_FILE).is_file() == (weight < 1.0)
        got = Predictor(model_dir, device="cpu").predict_proba(texts)[0]
        want = weight * encoder.predict_proba(texts)[0] + (1 - weight) * ngram.predict_proba(texts)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_train_result_reports_history_and_efficiency(trained):
    assert trained.resumed_from_step == 0 and trained.world_size == 1 and trained.is_main_process
    assert trained.global_step == 39  # ceil(200 / 16) steps * 3 epochs
    assert [h["epoch"] for h in trained.history] == [1.0, 2.0, 3.0]
    assert all(h["train_loss"] > 0 and 0 <= h["val_macro_f1"] <= 1 for h in trained.history)
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]
    # Length-grouped dynamic padding beats padding every example to max_length (~16/34 real).
    assert 0.7 < trained.padding_efficiency <= 1.0
    assert trained.train_samples_per_s > 0 and trained.device == "cpu"


def test_labels_from_config_with_three_classes(tmp_path):
    classes = ("neg", "mid", "pos")
    train, val = make_frame(150, classes, seed=3), make_frame(30, classes, seed=4)
    cfg = apply_overrides(tiny_config(epochs=1), {"data": {"labels": list(classes)}})
    result = train_model(cfg, train, val, tmp_path / "m", tmp_path / "c")
    assert result.labels == list(classes)
    pred = Predictor(tmp_path / "m", device="cpu")
    assert pred.labels == list(classes)
    assert len(pred.predict(["好棒"])[0].probabilities) == 3


def test_unknown_label_in_val_is_a_data_error(tmp_path, frames):
    train, val = frames
    val = val.assign(label=["neg"] * (len(val) - 1) + ["other"])
    with pytest.raises(DataError, match="other"):
        train_model(tiny_config(), train, val, tmp_path / "m", tmp_path / "c")


# --------------------------------------------------------------------------- resume
def test_resume_after_crash_continues_from_checkpoint(tmp_path, frames, trained):
    train, val = frames
    cfg = tiny_config()  # checkpoint_steps=4
    assert not prepare_checkpoint_dir(tmp_path / "c", training_fingerprint(cfg, train, val))  # fresh
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_model(cfg, train, val, tmp_path / "m", tmp_path / "c", callbacks=[_CrashAt(10)])
    assert not (tmp_path / "m" / "model.safetensors").exists()

    assert prepare_checkpoint_dir(tmp_path / "c", training_fingerprint(cfg, train, val))  # same inputs: kept
    probe = _StepAtStart()
    result = train_model(cfg, train, val, tmp_path / "m", tmp_path / "c", callbacks=[probe])
    assert result.resumed_from_step == 8  # latest checkpoint at or before the crash
    assert probe.start_step == 8
    assert result.global_step == trained.global_step  # same end as an uninterrupted run
    assert [h["epoch"] for h in result.history] == [1.0, 2.0, 3.0]  # epoch-1 eval restored from state

    # A config change makes the old checkpoints stale: cleared, fresh start, fingerprint rewritten.
    old = json.loads((tmp_path / "c" / FINGERPRINT_FILE).read_text())
    changed = tiny_config(learning_rate=4e-3, epochs=1)
    assert not prepare_checkpoint_dir(tmp_path / "c", training_fingerprint(changed, train, val))
    assert not list((tmp_path / "c").glob("checkpoint-*"))
    probe = _StepAtStart()
    result = train_model(changed, train, val, tmp_path / "m", tmp_path / "c", callbacks=[probe])
    assert result.resumed_from_step == 0 and probe.start_step == 0 and result.global_step == 13
    assert json.loads((tmp_path / "c" / FINGERPRINT_FILE).read_text()) != old


def test_effective_config_applies_the_gpu_profile_only_with_cuda(monkeypatch):
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    gpu = apply_overrides(cfg, cfg.train.gpu_profile)  # a typo in params.yaml fails here, not on a GPU box
    assert gpu != cfg
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert effective_config(cfg) == cfg
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert effective_config(cfg) == gpu


# --------------------------------------------------------------------------- MLM
def test_mlm_pretraining_then_finetune(tmp_path, frames):
    train, val = frames
    cfg = apply_overrides(tiny_config(epochs=2), {"model": {"mlm": {"enabled": True, "epochs": 1}}})
    corpus = tmp_path / "extra.txt"
    corpus.write_text("好的酒店\n\n很差的服务\n", encoding="utf-8")
    cfg = apply_overrides(cfg, {"model": {"mlm": {"extra_corpus": str(corpus)}}})
    result = train_model(cfg, train, val, tmp_path / "m", tmp_path / "c")
    mlm_dir = tmp_path / "c" / "mlm"
    assert (mlm_dir / "model.safetensors").is_file()
    assert json.loads((mlm_dir / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert result.global_step == 26
    Predictor(tmp_path / "m", device="cpu").predict(["好棒"])


# --------------------------------------------------------------------------- DDP
@pytest.mark.integration
def test_ddp_two_processes_write_one_model(tmp_path, repo_root):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root / "src")}
    script = repo_root / "tests" / "ddp_train_script.py"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["is_main_process"] for r in ranks] == [True, False]
    # Each rank sees half of each global batch: ceil(200 / (16 * 2)) steps * 3 epochs.
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 21
    assert sorted(p.name for p in tmp_path.iterdir() if (p / "model.safetensors").is_file()) == ["model"]
    assert Predictor(tmp_path / "model", device="cpu").labels == ["neg", "pos"]


def test_class_weighted_loss_only_when_classes_are_skewed(tmp_path: Path, caplog) -> None:
    import torch

    from textclf.train.trainer import class_weights, weighted_loss

    assert class_weights([0, 1, 0, 1], 2, 1.5) is None
    assert (
        class_weights([0] * 8 + [1] * 2, 2, None) is None and class_weights([0] * 8 + [1] * 2, 2, 5.0) is None
    )
    w = class_weights([0] * 8 + [1] * 2, 2, 1.5)
    np.testing.assert_allclose(w, [10 / 16, 10 / 4])  # inverse frequency, mean 1 over the examples
    logits, labels = torch.randn(6, 2), torch.tensor([0, 0, 0, 1, 1, 0])
    per_item = torch.nn.functional.cross_entropy(logits, labels, reduction="none") * torch.tensor(w)[labels]
    got = weighted_loss(w, ["a", "b"])({"logits": logits}, labels, num_items_in_batch=12)
    torch.testing.assert_close(got, per_item.sum().float() / 12)

    frame = make_frame(200)
    skewed = pd.concat([frame[frame.label == "neg"], frame[frame.label == "pos"].head(20)])
    with caplog.at_level("INFO", logger="textclf.train.trainer"):
        result = train_model(
            tiny_config(epochs=2), skewed, make_frame(40, seed=1), tmp_path / "m", tmp_path / "c"
        )
    assert "class-weighted loss {'neg': 0.6, 'pos': 3.0}" in caplog.text
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])


def test_length_grouped_batches_come_in_random_order() -> None:
    """Every example once per epoch; each batch of 32 consecutive indices is a length group (the spread
    of one sorted chunk's slice), the groups are not a long-to-short sweep (HF's order, which cost val
    points), and the order is a function of (seed, epoch) so that a resumed run skips the same batches."""
    lengths = np.random.default_rng(0).integers(1, 128, size=3300).tolist()
    sampler = ShuffledLengthGroups(lengths, batch_size=32, seed=7)
    order = list(sampler)
    assert sorted(order) == list(range(3300))
    batches = [order[i : i + 32] for i in range(0, 3300, 32)]
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches[:-1]]
    assert np.median(spans) <= 4  # grouped: random batches would span ~120
    first_max = [max(lengths[i] for i in b) for b in batches[:50]]
    assert abs(np.corrcoef(range(50), first_max)[0, 1]) < 0.5  # no sweep in either direction
    assert len(batches[-1]) == 3300 % 32  # the short batch last: the DataLoader's batches stay groups
    assert list(ShuffledLengthGroups(lengths, 32, seed=7)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order

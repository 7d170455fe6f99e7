"""Evaluation: hand-computed metrics, calibration, slices, the TF-IDF baseline and the files written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from projects import params, section
from textclf.errors import DataError
from textclf.evaluate import metrics as M
from textclf.evaluate.report import evaluate_model_and_baseline, numeric_metrics, score_split
from textclf.model.ngram import train_ngram
from textclf.train.blend import fit_ngram

BIN = ["negative", "positive"]


def one_hot_proba(pred: list[str], labels: list[str], conf: float | list[float] = 0.9) -> np.ndarray:
    """Probabilities whose argmax is ``pred``; the rest of the mass spread evenly."""
    confs = [conf] * len(pred) if isinstance(conf, float) else conf
    k = len(labels)
    out = np.empty((len(pred), k))
    for i, (p, c) in enumerate(zip(pred, confs, strict=True)):
        out[i, :] = (1 - c) / (k - 1)
        out[i, labels.index(p)] = c
    return out


# 10 binary examples: TP=3, FN=2, FP=1, TN=4 for "positive".
GOLD10 = ["positive"] * 5 + ["negative"] * 5
PRED10 = ["positive"] * 3 + ["negative"] * 2 + ["negative"] * 4 + ["positive"]


def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    else:
        yield obj


# --------------------------------------------------------------------------- metrics
def test_binary_metrics_match_hand_computation() -> None:
    m = M.classification_metrics(GOLD10, one_hot_proba(PRED10, BIN), BIN)
    p_pos, r_pos = 3 / 4, 3 / 5
    p_neg, r_neg = 4 / 6, 4 / 5
    f1_pos = 2 * p_pos * r_pos / (p_pos + r_pos)
    f1_neg = 2 * p_neg * r_neg / (p_neg + r_neg)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision_positive"] == pytest.approx(p_pos)
    assert m["recall_positive"] == pytest.approx(r_pos)
    assert m["precision_negative"] == pytest.approx(p_neg)
    assert m["recall_negative"] == pytest.approx(r_neg)
    assert m["f1_positive"] == pytest.approx(2 / 3)
    assert m["f1_negative"] == pytest.approx(8 / 11)
    assert m["macro_f1"] == pytest.approx((f1_pos + f1_neg) / 2) == pytest.approx(23 / 33)
    assert m["support_positive"] == 5 and m["support_negative"] == 5
    # rows = gold, columns = predicted, both in labels order
    assert m["confusion_matrix"] == [[4, 1], [2, 3]]


def test_three_class_metrics_match_hand_computation() -> None:
    labels = ["a", "b", "c"]
    gold = list("aaaabbcccc")
    pred = list("aaabbbccaa")
    m = M.classification_metrics(gold, one_hot_proba(pred, labels, 0.6), labels)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert (m["precision_a"], m["recall_a"]) == pytest.approx((3 / 5, 3 / 4))
    assert (m["precision_b"], m["recall_b"]) == pytest.approx((2 / 3, 1.0))
    assert (m["precision_c"], m["recall_c"]) == pytest.approx((1.0, 1 / 2))
    assert m["f1_b"] == pytest.approx(4 / 5)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [2, 0, 2]]


def test_perfect_and_all_wrong_predictions() -> None:
    perfect = M.classification_metrics(GOLD10, one_hot_proba(GOLD10, BIN, 1.0), BIN)
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    flipped = ["negative" if g == "positive" else "positive" for g in GOLD10]
    wrong = M.classification_metrics(GOLD10, one_hot_proba(flipped, BIN, 1.0), BIN)
    assert wrong["accuracy"] == 0.0 and wrong["macro_f1"] == 0.0
    assert wrong["confusion_matrix"] == [[0, 5], [5, 0]]
    y = M.encode_labels(GOLD10, BIN)
    ece = lambda proba: M.expected_calibration_error(M.reliability_bins(y, proba, 10))  # noqa: E731
    assert ece(one_hot_proba(GOLD10, BIN, 1.0)) == pytest.approx(0.0)
    assert ece(one_hot_proba(flipped, BIN, 1.0)) == pytest.approx(1.0)


def test_class_absent_from_gold_counts_in_macro_f1() -> None:
    labels = ["a", "b", "c"]
    m = M.classification_metrics(list("aabb"), one_hot_proba(list("aabb"), labels), labels)
    assert m["support_c"] == 0
    assert (m["precision_c"], m["recall_c"], m["f1_c"]) == (0.0, 0.0, 0.0)
    # The documented convention: macro-F1 averages over every configured label (absent class: F1 0).
    assert m["accuracy"] == 1.0 and m["macro_f1"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"][2] == [0, 0, 0]


def test_three_consumers_report_the_same_macro_f1() -> None:
    """Training's compute_metrics, the evaluate stage and the gate get the same predictions (with a
    class absent from gold and one never predicted) and must report the same macro-F1."""
    from types import SimpleNamespace

    from textclf.gate.behaviour import not_applicable
    from textclf.gate.decision import Evidence, decide
    from textclf.train.trainer import compute_metrics

    labels = ["a", "b", "c", "d"]
    rng = np.random.default_rng(5)
    gold_idx = rng.integers(0, 3, 200)  # "d" never occurs in gold
    pred_idx = np.where(rng.random(200) < 0.6, gold_idx, rng.integers(0, 2, 200))  # "c" only when right
    gold = [labels[i] for i in gold_idx]
    proba = one_hot_proba([labels[i] for i in pred_idx], labels)

    trainer = compute_metrics(SimpleNamespace(predictions=np.log(proba), label_ids=gold_idx))["macro_f1"]
    evaluate = M.classification_metrics(gold, proba, labels)["macro_f1"]
    ev = Evidence(
        "v",
        tuple(labels),
        tuple(map(str, range(200))),
        tuple(gold),
        tuple(labels[i] for i in pred_idx),
        behaviour=not_applicable("n/a"),
    )
    gate = next(c.value for c in decide(ev, None, section("gate")).criteria if c.name == "macro_f1_floor")
    assert trainer == evaluate == gate
    assert gate == pytest.approx(
        __import__("sklearn.metrics").metrics.f1_score(
            gold_idx, pred_idx, labels=[0, 1, 2, 3], average="macro", zero_division=0
        )
    )


def test_unknown_gold_label_is_a_data_error() -> None:
    with pytest.raises(DataError, match="neutral"):
        M.classification_metrics(["neutral"], np.array([[0.5, 0.5]]), BIN)


def test_ece_hand_computed() -> None:
    # bins of width 0.2: (0.8,1] holds 0.9 right + 0.9 wrong, (0.6,0.8] 0.7 right, (0.4,0.6] 0.55 right
    gold = ["positive", "positive", "negative", "negative"]
    pred = ["positive", "negative", "negative", "negative"]
    proba = one_hot_proba(pred, BIN, [0.9, 0.9, 0.7, 0.55])
    y = M.encode_labels(gold, BIN)
    expected = 0.5 * abs(0.5 - 0.9) + 0.25 * abs(1 - 0.7) + 0.25 * abs(1 - 0.55)
    bins = M.reliability_bins(y, proba, 5)
    assert M.expected_calibration_error(bins) == pytest.approx(expected) == pytest.approx(0.3875)
    assert [b["count"] for b in bins] == [0, 0, 1, 1, 2]
    assert bins[4]["accuracy"] == pytest.approx(0.5) and bins[4]["mean_confidence"] == pytest.approx(0.9)
    assert bins[0]["accuracy"] is None


def test_one_vs_rest_curves_any_number_of_classes() -> None:
    gold = ["negative", "positive", "negative", "positive"]
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    curves = M.one_vs_rest_curves(M.encode_labels(gold, BIN), proba, BIN)
    # pairs (pos, neg) ranked correctly: (0.8>0.1), (0.8>0.6), (0.3>0.1), (0.3<0.6) -> 3/4
    assert curves["roc_auc_positive"] == pytest.approx(0.75) == curves["roc_auc_negative"]
    assert curves["roc_auc_macro"] == pytest.approx(0.75)
    assert {p["class"] for p in curves["roc"]} == set(BIN)
    labels = ["a", "b", "c"]
    three = M.one_vs_rest_curves(np.array([0, 1, 1]), one_hot_proba(list("abb"), labels), labels)
    assert three["roc_auc_c"] is None and three["roc_auc_a"] == 1.0  # c absent: undefined, not a crash
    assert {p["class"] for p in three["pr"]} == {"a", "b"}


# --------------------------------------------------------------------------- slices
def _slices(texts, gold, pred, buckets, negation):
    masks = M.slice_masks(texts, buckets, negation)
    return M.slice_metrics(masks, M.encode_labels(gold, BIN), M.encode_labels(pred, BIN), 2)


def test_length_slices_and_empty_slice() -> None:
    texts = ["x" * n for n in (5, 20, 21, 50, 51, 100)]
    gold = ["positive", "negative", "positive", "negative", "positive", "negative"]
    pred = ["positive", "negative", "negative", "negative", "negative", "positive"]
    s = _slices(texts, gold, pred, (20, 50, 100), ())
    assert list(s) == ["len_le_20", "len_21_50", "len_51_100", "len_gt_100"]
    assert s["len_le_20"] == {"n": 2, "accuracy": 1.0, "macro_f1": 1.0}
    assert s["len_21_50"]["n"] == 2 and s["len_21_50"]["accuracy"] == 0.5
    assert s["len_51_100"] == {"n": 2, "accuracy": 0.0, "macro_f1": 0.0}
    assert s["len_gt_100"] == {"n": 0}
    assert "has_negation" not in s  # no negation words configured


def test_negation_slices_on_chinese() -> None:
    texts = ["这个不好", "没有问题", "很好很好", "质量一般", "别买"]
    gold = ["negative", "positive", "positive", "negative", "negative"]
    pred = ["positive", "negative", "positive", "negative", "negative"]
    s = _slices(texts, gold, pred, (20,), ("不", "没", "别"))
    assert s["has_negation"]["n"] == 3 and s["has_negation"]["accuracy"] == pytest.approx(1 / 3)
    assert s["no_negation"]["n"] == 2 and s["no_negation"]["accuracy"] == 1.0
    assert s["len_le_20"]["n"] == 5 and s["len_gt_20"]["n"] == 0


def test_ascii_negation_words_match_whole_words() -> None:
    masks = M.slice_masks(["not good", "nothing wrong", "NOT bad", "不行"], (100,), ("not", "不"))
    assert masks["has_negation"].tolist() == [True, False, True, True]


# --------------------------------------------------------------------------- baseline
def _toy_sentiment(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    filler = list("这个东西我们今天买了用起来感觉")
    texts, labels = [], []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        marker = "很好" if label == "positive" else "太差"
        words = rng.choice(filler, size=6).tolist()
        words.insert(int(rng.integers(0, 6)), marker)
        texts.append("".join(words))
        labels.append(label)
    return texts, labels


def test_baseline_learns_separable_toy_set_and_is_deterministic() -> None:
    train_x, train_y = _toy_sentiment(60, seed=0)
    test_x, test_y = _toy_sentiment(30, seed=1)
    cfg = section("evaluate.baseline", ngram_min=1, ngram_max=2, C=4.0, max_iter=500)
    labels = ["positive", "negative"]  # deliberately not sklearn's sorted order
    model = train_ngram(train_x, train_y, cfg, labels)
    proba = model.predict_proba(test_x)
    assert proba.shape == (30, 2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    acc = np.mean([labels[i] == y for i, y in zip(proba.argmax(axis=1), test_y, strict=True)])
    assert acc > 0.9
    again = train_ngram(train_x, train_y, cfg, labels).predict_proba(test_x)
    assert np.array_equal(proba, again)
    assert model.predict_proba([]).shape == (0, 2)


def test_baseline_unseen_label_gets_zero_and_one_class_fails() -> None:
    train_x, train_y = _toy_sentiment(20, seed=0)
    model = train_ngram(train_x, train_y, section("evaluate.baseline"), ["negative", "neutral", "positive"])
    assert np.all(model.predict_proba(train_x[:3])[:, 1] == 0.0)
    with pytest.raises(DataError, match="two classes"):
        train_ngram(train_x[:1], train_y[:1], section("evaluate.baseline"), BIN)


# --------------------------------------------------------------------------- files
def _numeric_only(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in _leaves(data))
    return data


def test_score_split_writes_the_same_files_for_any_number_of_classes(tmp_path: Path) -> None:
    test = pd.DataFrame(
        {"id": [f"t{i}" for i in range(10)], "text": [f"第{i}条评论" for i in range(10)], "label": GOLD10}
    )
    proba = one_hot_proba(PRED10, BIN, [0.6, 0.7, 0.8, 0.9, 0.95, 0.55, 0.65, 0.75, 0.85, 0.99])
    m = score_split(test, proba, BIN, section("evaluate"), tmp_path, "")
    assert m["accuracy"] == pytest.approx(0.7) and m["ece"] is not None
    preds = pd.read_parquet(tmp_path / "predictions.parquet")
    assert list(preds.columns) == [
        *("id", "text", "gold", "predicted", "correct", "confidence"),
        *("prob_negative", "prob_positive"),
    ]
    assert preds["predicted"].tolist() == PRED10 and preds["correct"].sum() == 7
    confusion = pd.read_csv(tmp_path / "plots" / "confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 10
    roc = pd.read_csv(tmp_path / "plots" / "roc.csv")
    assert list(roc.columns) == ["class", "fpr", "tpr"] and set(roc["class"]) == set(BIN)
    assert json.loads((tmp_path / "report.json").read_text())["confusion_matrix"] == [[4, 1], [2, 3]]

    labels = ["a", "b", "c", "d", "e"]  # five classes, one absent: the same files, nothing missing
    five = pd.DataFrame({"id": list("0123456789"), "text": ["x"] * 10, "label": list("aaaabbcccc")})
    score_split(
        five, one_hot_proba(list("aaabbbccaa"), labels), labels, section("evaluate"), tmp_path, "baseline_"
    )
    binary = sorted(p.name for p in (tmp_path / "plots").iterdir() if not p.name.startswith("baseline_"))
    multi = sorted(
        p.name.removeprefix("baseline_")
        for p in (tmp_path / "plots").iterdir()
        if p.name.startswith("baseline_")
    )
    assert (
        binary
        == multi
        == sorted(
            [
                "confusion.csv",
                "calibration.csv",
                "roc.csv",
                "pr.csv",
                "confusion_matrix.png",
                "calibration.png",
                "roc_curve.png",
                "pr_curve.png",
            ]
        )
    )
    for name in binary:
        if name.endswith(".png"):
            data = (tmp_path / "plots" / name).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name


def test_numeric_metrics_sorted_and_flattened() -> None:
    metrics = {
        "transformer": {
            "macro_f1": 0.5,
            "accuracy": 0.75,
            "n": 4,
            "labels": ["a"],
            "confusion_matrix": [[1]],
            "ece": None,
            "nan": float("nan"),
            "flag": True,
            "slices": {"len_gt_100": {"n": 0}},
        },
        "baseline": {"accuracy": 0.5},
    }
    data = numeric_metrics(metrics)
    assert data == {
        "baseline": {"accuracy": 0.5},
        "transformer": {"accuracy": 0.75, "macro_f1": 0.5, "n": 4, "slices": {"len_gt_100": {"n": 0}}},
    }
    assert list(data) == sorted(data) and list(data["transformer"]) == sorted(data["transformer"])


# --------------------------------------------------------------------------- end to end with a tiny model
def _tiny_model_dir(path: Path, texts: list[str], labels: list[str], max_length: int) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    from textclf.model.predictor import Preprocessing

    torch.manual_seed(0)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for t in texts for c in t})
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    BertTokenizer(vocab=vocab, do_lower_case=False).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
    )
    BertForSequenceClassification(config).save_pretrained(path)
    Preprocessing(normalize=section("prepare.normalize"), max_length=max_length).save(path)
    return path


def test_evaluate_model_and_baseline_end_to_end(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    train_x, train_y = _toy_sentiment(40, seed=0)
    test_x, test_y = _toy_sentiment(12, seed=1)
    test_x[0] = test_x[0] * 3  # longer than max_length: counted as truncated
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pd.DataFrame({"id": [f"tr{i}" for i in range(40)], "text": train_x, "label": train_y}).to_parquet(
        prepared / "train.parquet"
    )
    pd.DataFrame({"id": [f"te{i}" for i in range(12)], "text": test_x, "label": test_y}).to_parquet(
        prepared / "test.parquet"
    )
    model_dir = _tiny_model_dir(tmp_path / "model", train_x + test_x, BIN, max_length=16)
    out = tmp_path / "eval"

    cfg = params()
    result = evaluate_model_and_baseline(cfg.evaluate, cfg.train.eval_batch_size, model_dir, prepared, out)

    assert result.transformer["n"] == 12 and result.baseline is not None
    assert result.baseline["accuracy"] > 0.9  # the markers separate the classes
    assert result.transformer["truncated_fraction"] == pytest.approx(1 / 12)
    metrics = _numeric_only(out / "metrics.json")
    assert set(metrics) == {"transformer", "baseline", "transformer_vs_baseline", "variants"}
    for name in ("torch", "bf16"):  # what `dvc metrics show` lists per variant
        assert set(metrics["variants"][name]) == {
            "accuracy", "macro_f1", "agreement", "p95_ms", "size_mb", "speedup", "passed"
        }  # fmt: skip
    assert (out / "variants" / "parity.json").is_file()
    assert metrics["baseline"]["accuracy"] == pytest.approx(result.baseline["accuracy"])
    assert metrics["transformer_vs_baseline"]["macro_f1_delta"] == pytest.approx(
        result.transformer["macro_f1"] - result.baseline["macro_f1"]
    )
    assert (out / "baseline_predictions.parquet").is_file()
    preds = pd.read_parquet(out / "predictions.parquet")
    assert preds["id"].tolist() == [f"te{i}" for i in range(12)]
    assert np.allclose(preds[["prob_negative", "prob_positive"]].sum(axis=1), 1.0, atol=1e-5)

    # model.family ngram: the same stage; no variant applies, parity.json (a DVC output) still exists
    train = pd.read_parquet(prepared / "train.parquet")
    fit_ngram(cfg.evaluate.baseline, cfg.prepare.normalize, BIN, tmp_path / "ngram", train, train)
    ngram = evaluate_model_and_baseline(cfg.evaluate, 8, tmp_path / "ngram", prepared, tmp_path / "e2")
    assert ngram.variants == {} and ngram.transformer["truncated_fraction"] == 0.0
    assert ngram.transformer["macro_f1"] == pytest.approx(ngram.baseline["macro_f1"])  # the same model
    assert json.loads((tmp_path / "e2" / "variants" / "parity.json").read_text()) == {"variants": {}}


def test_missing_split_is_a_data_error(tmp_path: Path) -> None:
    cfg = params()
    with pytest.raises(DataError, match="test.parquet"):
        evaluate_model_and_baseline(cfg.evaluate, 8, tmp_path / "model", tmp_path, tmp_path / "out")

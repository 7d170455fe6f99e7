"""Normalize / dedup / conflicts / split: table-driven unit tests on tiny frames."""

from __future__ import annotations

import pandas as pd
import pytest

from projects import section
from textclf.data.normalize import normalize
from textclf.data.prepare import (
    assert_disjoint,
    dedupe,
    drop_empty,
    prepare,
    resolve_conflicts,
    stratified_split,
    write_prepared,
)
from textclf.errors import DataError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("质量很好", "质量很好"),
        ("质量很好！", "质量很好!"),  # full-width punctuation → half-width (NFKC)
        ("ＡＢＣ１２３", "ABC123"),  # full-width Latin and digits
        ("\ufeff开头有BOM", "开头有BOM"),
        ("零\u200b宽\u200d空格", "零宽空格"),
        ("控制\x07字符\x00", "控制字符"),
        ("  多个   空格\t\n换行  ", "多个 空格 换行"),
        ("全角\u3000空格", "全角 空格"),  # ideographic space
        ("", ""),
        ("   ", ""),
        ("\u200b\ufeff", ""),
        ("坏\udcff字节", "坏字节"),  # lone surrogate from surrogateescape decoding
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw, section("prepare.normalize")) == expected


def test_normalize_flags_off_and_lowercase() -> None:
    cfg = section(
        "prepare.normalize", nfkc=False, strip_invisible=False, collapse_whitespace=False, lowercase=True
    )
    assert normalize("ＡB  c\u200b", cfg) == "ＡB  c\u200b".lower()


def _frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label"])


def test_drop_empty_counts() -> None:
    res = drop_empty(_frame([("a", "x"), ("", "y"), ("b", "x")]))
    assert res.dropped == 1
    assert list(res.frame["text"]) == ["a", "b"]


def test_dedupe_keeps_first() -> None:
    res = dedupe(_frame([("a", "x"), ("b", "y"), ("a", "x"), ("a", "x")]))
    assert res.dropped == 2
    assert list(res.frame["text"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("policy", "expected_rows", "expected_dropped"),
    [
        # "a": x,x,y (conflict, majority x); "b": x,y (tie); "c": clean
        ("drop", [("c", "z")], 5),
        ("majority", [("a", "x"), ("a", "x"), ("c", "z")], 3),
        ("first", [("a", "x"), ("a", "x"), ("b", "x"), ("c", "z")], 2),
    ],
)
def test_resolve_conflicts(policy: str, expected_rows: list[tuple[str, str]], expected_dropped: int) -> None:
    frame = _frame([("a", "x"), ("b", "x"), ("a", "x"), ("a", "y"), ("b", "y"), ("c", "z")])
    res = resolve_conflicts(frame, policy)
    assert res.detail["conflicting_texts"] == 2
    assert res.dropped == expected_dropped
    assert sorted(map(tuple, res.frame[["text", "label"]].to_numpy())) == sorted(expected_rows)


def test_stratified_split_is_stratified_deterministic_and_order_free() -> None:
    rows = [(f"pos {i}", "positive") for i in range(100)] + [(f"neg {i}", "negative") for i in range(300)]
    frame = _frame(rows)
    a = stratified_split(frame, 0.1, 0.2, seed=7)
    b = stratified_split(frame.sample(frac=1.0, random_state=3), 0.1, 0.2, seed=7)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(a[name], b[name])
    assert (a["test"]["label"] == "positive").sum() == 20
    assert (a["test"]["label"] == "negative").sum() == 60
    assert (a["val"]["label"] == "positive").sum() == 10
    assert sum(len(s) for s in a.values()) == 400
    assert_disjoint(a)
    c = stratified_split(frame, 0.1, 0.2, seed=8)
    assert set(c["test"]["text"]) != set(a["test"]["text"])


def test_split_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="deduplicated"):
        stratified_split(_frame([("a", "x"), ("a", "x")]), 0.1, 0.2, seed=1)


def test_assert_disjoint_detects_leak() -> None:
    splits = {"train": _frame([("a", "x")]), "test": _frame([("a", "x")])}
    with pytest.raises(AssertionError, match="shared between train and test"):
        assert_disjoint(splits)


def test_prepare_end_to_end_counts_add_up() -> None:
    rows = []
    for i in range(60):
        rows.append((f"好评 {i}", "positive"))
        rows.append((f"好评 {i}", "positive"))  # exact duplicate
        rows.append((f"差评 {i}", "negative"))
    rows.append(("ＡＢＣ", "positive"))
    rows.append(("ABC", "negative"))  # same as the previous after NFKC → a conflict
    rows.append(("\u200b", "negative"))  # empty after normalization
    rows.append(("差评 1 ", "negative"))  # duplicate after whitespace collapse
    cfg = section("prepare", val_fraction=0.2, test_fraction=0.2, seed=1)
    out = prepare(_frame(rows), section("data", labels=("negative", "positive")), cfg)
    m = out.manifest
    assert m["rows_in"] == len(rows)
    assert m["dropped"] == {"empty": 1, "label_conflict": 2, "duplicate": 61}
    assert m["conflicting_texts"] == 1
    assert m["rows_out"] == 120
    assert sum(s["rows"] for s in m["splits"].values()) == m["rows_out"]
    assert_disjoint(out.splits)
    for df in out.splits.values():
        assert df["id"].is_unique
        assert set(df.columns) == {"id", "text", "label"}


def test_only_approved_feedback_within_the_caps_joins_train() -> None:
    rows = [(f"好评 {i}", "positive") for i in range(100)] + [(f"差评 {i}", "negative") for i in range(100)]
    feedback = pd.DataFrame(
        [
            # id, text, label, received_at, submitter, review
            *[(f"a{i}", f"甲说好 {i}", "positive", f"t{i:02d}", "alice", "approved") for i in range(5)],
            *[(f"b{i}", f"乙说差 {i}", "negative", f"t{i:02d}", "bob", "approved") for i in range(30)],
            ("p", "还没审", "positive", "t00", "carol", "pending"),
            ("r", "被拒绝", "negative", "t00", "carol", "rejected"),
            ("x", "没有审核列之前", "positive", "t00", "", ""),
        ],
        columns=["id", "text", "label", "received_at", "submitter", "review"],
        dtype=object,
    )
    cfg = section("prepare", val_fraction=0.1, test_fraction=0.2, seed=1)  # raw train: 140 rows
    out = prepare(_frame(rows), section("data", labels=("negative", "positive")), cfg, feedback)
    # bob: 30 approved, 20 over max_per_submitter (earliest kept); 5 + 10 fit in 14 = 10% of train.
    assert out.manifest["feedback"] == {
        "rows": 38,
        "added_to_train": 14,
        "excluded_unapproved": 3,
        "excluded_over_submitter_cap": 0,
        "excluded_equal_to_val_or_test": 0,
        "dropped_duplicate_or_conflict": 0,
        "excluded_over_train_share": 21,
    }
    capped = cfg.model_copy(update={"feedback": cfg.feedback.model_copy(update={"max_per_submitter": 10})})
    out = prepare(_frame(rows), section("data", labels=("negative", "positive")), capped, feedback)
    fed = out.manifest["feedback"]
    assert fed["excluded_over_submitter_cap"] == 20 and fed["added_to_train"] == 14
    assert fed["excluded_over_train_share"] == 1
    train = set(out.splits["train"]["text"])
    # Earliest first: bob's 10th row (t09, the latest of the 15 left) is the one over the share.
    assert {"还没审", "被拒绝", "没有审核列之前", "乙说差 10", "乙说差 9"}.isdisjoint(train)
    assert {"乙说差 8", "甲说好 4"} <= train
    open_review = capped.model_copy(update={"feedback": capped.feedback.model_copy(update={"review": False})})
    fed = prepare(_frame(rows), section("data", labels=("negative", "positive")), open_review, feedback)
    assert fed.manifest["feedback"]["excluded_unapproved"] == 0


def test_prepare_custom_columns_and_three_classes() -> None:
    frame = pd.DataFrame(
        {"body": [f"t{c}{i}" for c in "abc" for i in range(20)], "y": [c for c in "abc" for _ in range(20)]}
    )
    data = section("data", text_column="body", label_column="y", labels=None)
    out = prepare(frame, data, section("prepare", seed=3))
    assert out.manifest["labels"] == ["a", "b", "c"]
    assert all(out.manifest["splits"]["test"]["per_class"][c] == 4 for c in "abc")


def test_prepare_missing_column_and_unknown_label() -> None:
    with pytest.raises(DataError, match="no column"):
        prepare(pd.DataFrame({"text": ["a"]}), section("data", labels=None), section("prepare"))
    with pytest.raises(DataError, match="not in data.labels"):
        prepare(
            _frame([("a", "neutral")]), section("data", labels=("negative", "positive")), section("prepare")
        )


def test_write_prepared_is_byte_identical(tmp_path) -> None:
    rows = [(f"文本{i}", "positive" if i % 2 else "negative") for i in range(200)]
    out = prepare(_frame(rows), section("data", labels=None), section("prepare", seed=5))
    write_prepared(out, tmp_path / "a")
    write_prepared(out, tmp_path / "b")
    for name in ("train.parquet", "val.parquet", "test.parquet", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

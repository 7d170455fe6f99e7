"""The raw and prepared data suites: which checks exist, what each asserts, on which table.

Checks that GX cannot express on the rows themselves (label conflicts, split leakage, class
counts per split) run on small derived tables registered as their own GX assets, so GX still
decides pass/fail and the Data Docs show them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from textclf import contracts as C
from textclf.config import CheckConfig, DataConfig, PreparedChecks, RawChecks, ValidationConfig
from textclf.errors import DataError
from textclf.validation import expectations as custom
from textclf.validation.report import (
    GX_RESULT_FILE,
    CheckResult,
    ValidationReport,
    write_summary,
)
from textclf.validation.runner import ROWS, PlannedCheck, run_checks

log = logging.getLogger(__name__)

PREPARED_COLUMNS = ("id", "text", "label")
_SURROGATES = re.compile("[\ud800-\udfff]")


# --------------------------------------------------------------------------- frames
def gx_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy GX (and pandas' Arrow strings) can hold: lone surrogates from undecodable bytes
    become U+FFFD, so the text_utf8 check counts them instead of GX crashing on them."""
    out = frame.reset_index(drop=True)
    for column in out.columns:
        if out[column].dtype == object:
            values = out[column]
            dirty = values.map(lambda v: isinstance(v, str) and _SURROGATES.search(v) is not None)
            if dirty.any():
                out[column] = values.map(lambda v: _SURROGATES.sub("\ufffd", v) if isinstance(v, str) else v)
    return out


def _labels_as_text(labels: pd.Series) -> pd.Series:
    """Labels compared as strings (config labels are strings); a missing label becomes ""."""
    return labels.map(lambda v: "" if _is_missing(v) else str(v)).astype(object)


def _is_missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def distinct_pairs(frame: pd.DataFrame, key: str, other: str) -> pd.DataFrame:
    """Distinct (key, other) pairs with a non-missing key; a key repeated here has >1 ``other``.

    Sorted so that the pairs of one key sit together (GX examples then show both sides)."""
    pairs = frame.loc[frame[key].notna(), [key, other]].drop_duplicates()
    ordered = pairs.sort_values([key, other], kind="stable", key=lambda col: col.astype(str))
    return ordered.reset_index(drop=True)


def class_table(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """One row per (split, class) — zeros included — with the count and the fraction of the split."""
    counts = frame.groupby(["split", "label"], observed=True).size()
    rows = []
    for split in C.SPLITS:
        total = int((frame["split"] == split).sum())
        for label in labels:
            n = int(counts.get((split, label), 0))
            rows.append({"split": split, "label": label, "count": n, "fraction": n / total if total else 0.0})
    return pd.DataFrame(rows, columns=["split", "label", "count", "fraction"])


# --------------------------------------------------------------------------- check plans
Plan = Callable[..., PlannedCheck]


def _policy(checks: RawChecks | PreparedChecks) -> Plan:
    def plan(name: str, asset: str, build: Callable[..., Any], *needs: str) -> PlannedCheck:
        policy: CheckConfig = getattr(checks, name)  # the config models name every check
        return PlannedCheck(name, asset, policy.severity, policy.mostly, build, tuple(needs))

    return plan


def _runnable(planned: list[PlannedCheck], columns: list[str]) -> tuple[list[PlannedCheck], dict[str, str]]:
    """Drop checks whose column is missing (GX would only add "column does not exist" noise)."""
    kept, skipped = [], {}
    for check in planned:
        missing = [c for c in check.needs if c not in columns]
        if missing:
            skipped[check.name] = f"missing column {', '.join(map(repr, missing))}"
        else:
            kept.append(check)
    return kept, skipped


def raw_plan(
    columns: list[str], data_cfg: DataConfig, vcfg: ValidationConfig
) -> tuple[list[PlannedCheck], dict[str, str]]:
    """The raw suite for a table with ``columns``: (checks to run, skipped name -> reason)."""
    import great_expectations as gx

    rcfg, gxe = vcfg.raw, gx.expectations
    plan = _policy(rcfg.checks)
    text, label = data_cfg.text_column, data_cfg.label_column
    planned = [
        plan(
            "columns_present",
            ROWS,
            partial(gxe.ExpectTableColumnsToMatchSet, column_set=[text, label], exact_match=False),
        ),
        plan("row_count", ROWS, partial(gxe.ExpectTableRowCountToBeBetween, min_value=rcfg.min_rows)),
        plan("text_not_null", ROWS, partial(gxe.ExpectColumnValuesToNotBeNull, column=text), text),
        plan("text_not_blank", ROWS, partial(custom.ExpectTextNotBlank, column=text), text),
        plan(
            "text_length",
            ROWS,
            partial(
                gxe.ExpectColumnValueLengthsToBeBetween,
                column=text,
                min_value=rcfg.text_min_chars,
                max_value=rcfg.text_max_chars,
            ),
            text,
        ),
        plan("text_utf8", ROWS, partial(custom.ExpectTextDecodableAsUtf8, column=text), text),
        plan("label_in_set", ROWS, _label_check(gxe, label, data_cfg.labels), label),
        plan("text_unique", ROWS, partial(gxe.ExpectColumnValuesToBeUnique, column=text), text),
        plan(
            "no_label_conflicts",
            "text_labels",
            partial(custom.ExpectNoLabelConflicts, column=text),
            text,
            label,
        ),
    ]
    return _runnable(planned, columns)


def _label_check(gxe: Any, column: str, labels: tuple[str, ...] | None) -> Callable[..., Any]:
    if labels is not None:
        return partial(gxe.ExpectColumnValuesToBeInSet, column=column, value_set=list(labels))
    # Labels inferred from the data: nothing to compare against, but one class is no classifier.
    return partial(
        gxe.ExpectColumnUniqueValueCountToBeBetween,
        column=column,
        min_value=2,
        description="Labels are inferred from the data (data.labels is null): at least two classes",
    )


def _class_checks(plan: Plan, pcfg: Any, gxe: Any) -> list[PlannedCheck]:
    """Per split x class: a minimum count and a fraction within bounds (rows of the class table)."""
    lo, hi = pcfg.class_fraction_min, pcfg.class_fraction_max
    count = f"Every class has at least {pcfg.min_per_class_per_split} rows in every split (zeros included)"
    return [
        plan(
            "class_min_count",
            "class_table",
            partial(
                gxe.ExpectColumnValuesToBeBetween,
                column="count",
                min_value=pcfg.min_per_class_per_split,
                description=count,
            ),
            "label",
        ),
        plan(
            "class_balance",
            "class_table",
            partial(
                gxe.ExpectColumnValuesToBeBetween,
                column="fraction",
                min_value=lo,
                max_value=hi,
                description=f"Each class is {lo:g}..{hi:g} of its split",
            ),
            "label",
        ),
    ]


def prepared_plan(
    columns: list[str], vcfg: ValidationConfig, labels: list[str]
) -> tuple[list[PlannedCheck], dict[str, str]]:
    """The prepared suite on the concatenated splits (with a ``split`` column) and derived tables."""
    import great_expectations as gx

    pcfg, gxe = vcfg.prepared, gx.expectations
    plan = _policy(pcfg.checks)
    planned = [
        plan(
            "columns_present",
            ROWS,
            partial(gxe.ExpectTableColumnsToMatchSet, column_set=list(PREPARED_COLUMNS), exact_match=False),
        ),
        plan("text_not_blank", ROWS, partial(custom.ExpectTextNotBlank, column="text"), "text"),
        plan(
            "label_in_set",
            ROWS,
            partial(gxe.ExpectColumnValuesToBeInSet, column="label", value_set=labels),
            "label",
        ),
        plan(
            "unique_within_split",
            ROWS,
            partial(
                gxe.ExpectCompoundColumnsToBeUnique,
                column_list=["text", "split"],
                description="No text repeats within a split",
            ),
            "text",
        ),
        plan("disjoint_splits", "text_splits", partial(custom.ExpectSplitsDisjoint, column="text"), "text"),
        plan(
            "no_label_conflicts",
            "text_labels",
            partial(custom.ExpectNoLabelConflicts, column="text"),
            "text",
            "label",
        ),
        *_class_checks(plan, pcfg, gxe),
    ]
    return _runnable(planned, columns)


# --------------------------------------------------------------------------- suites
def validate_raw(
    frame: pd.DataFrame, data_cfg: DataConfig, vcfg: ValidationConfig, out_dir: Path
) -> ValidationReport:
    """Validate a raw table as read by ``read_table``; write summary.json, gx_result.json, data_docs/."""
    text, label = data_cfg.text_column, data_cfg.label_column
    rows = gx_safe(frame)
    columns = [str(c) for c in rows.columns]
    if label in columns:
        rows[label] = _labels_as_text(rows[label])
    labels_seen = sorted(set(rows[label]) - {""}) if label in columns else []
    planned, skipped = raw_plan(columns, data_cfg, vcfg)
    assets = {ROWS: rows}
    if text in columns and label in columns:
        assets["text_labels"] = distinct_pairs(rows, text, label)
    results = _run("raw", assets, planned, vcfg, out_dir)
    report = ValidationReport(
        suite="raw",
        checks=_explain_columns(results, [text, label], columns),
        labels_seen=labels_seen,
        stats=_raw_stats(rows, text, label, assets.get("text_labels")),
        skipped=skipped,
    )
    return _finish(report, out_dir, _raw_params(data_cfg, vcfg))


def validate_prepared(
    splits: Mapping[str, pd.DataFrame], data_cfg: DataConfig, vcfg: ValidationConfig, out_dir: Path
) -> ValidationReport:
    """Validate the train/val/test frames (columns id, text, label) together; write reports."""
    absent = [s for s in C.SPLITS if s not in splits]
    if absent:
        raise DataError(f"prepared data lacks split(s): {', '.join(absent)}")
    rows = gx_safe(pd.concat([splits[s].assign(split=s) for s in C.SPLITS], ignore_index=True))
    columns = [str(c) for c in rows.columns]
    has_text, has_label = "text" in columns, "label" in columns
    if has_label:
        rows["label"] = _labels_as_text(rows["label"])
    labels_seen = sorted(set(rows["label"]) - {""}) if has_label else []
    if data_cfg.labels is not None:
        labels = list(data_cfg.labels)
    else:
        labels = sorted(set(rows.loc[rows["split"] == "train", "label"]) - {""}) if has_label else []
    planned, skipped = prepared_plan(columns, vcfg, labels)
    assets: dict[str, pd.DataFrame] = {ROWS: rows}
    if has_text:
        assets["text_splits"] = distinct_pairs(rows, "text", "split")
    if has_text and has_label:
        assets["text_labels"] = distinct_pairs(rows, "text", "label")
    if has_label:
        assets["class_table"] = class_table(rows, labels)
    results = _run("prepared", assets, planned, vcfg, out_dir)
    report = ValidationReport(
        suite="prepared",
        checks=_explain_columns(results, list(PREPARED_COLUMNS), [c for c in columns if c != "split"]),
        labels_seen=labels_seen,
        stats=_prepared_stats(rows, assets),
        skipped=skipped,
    )
    return _finish(report, out_dir, {"labels": labels, **vcfg.prepared.model_dump(mode="json")})


def _run(
    suite: str,
    assets: dict[str, pd.DataFrame],
    planned: list[PlannedCheck],
    vcfg: ValidationConfig,
    out_dir: Path,
) -> list[CheckResult]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results, raw = run_checks(suite, assets, planned, vcfg.example_rows, out_dir / C.DATA_DOCS_DIR)
    (out_dir / GX_RESULT_FILE).write_text(
        json.dumps(raw, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    return results


def _finish(report: ValidationReport, out_dir: Path, params: dict[str, Any]) -> ValidationReport:
    write_summary(report, out_dir, {"params": params})
    log_fn = log.info if report.success else log.warning
    log_fn("%s", report.summary_text())
    return report


def _explain_columns(
    results: list[CheckResult], required: list[str], columns: list[str]
) -> list[CheckResult]:
    """Say "missing column X" rather than GX's set-mismatch details."""
    missing = [c for c in required if c not in columns]
    if not missing:
        return results
    observed = f"missing column(s) {', '.join(map(repr, missing))}; columns found: {columns}"
    return [replace(c, observed=observed) if c.name == "columns_present" else c for c in results]


def _raw_params(data_cfg: DataConfig, vcfg: ValidationConfig) -> dict[str, Any]:
    return {
        "labels": None if data_cfg.labels is None else list(data_cfg.labels),
        "text_column": data_cfg.text_column,
        "label_column": data_cfg.label_column,
        **vcfg.raw.model_dump(mode="json"),
    }


# --------------------------------------------------------------------------- stats
def _raw_stats(rows: pd.DataFrame, text: str, label: str, pairs: pd.DataFrame | None) -> dict[str, Any]:
    stats: dict[str, Any] = {"rows": len(rows), "columns": [str(c) for c in rows.columns]}
    if text in rows.columns:
        texts = rows[text]
        lengths = texts.dropna().astype(str).str.len()
        stats.update(
            distinct_texts=int(texts.nunique(dropna=True)),
            duplicate_texts=int(texts.duplicated().sum()),
            max_text_chars=int(lengths.max()) if len(lengths) else 0,
            min_text_chars=int(lengths.min()) if len(lengths) else 0,
        )
    if label in rows.columns:
        stats["class_counts"] = {str(k): int(v) for k, v in sorted(rows[label].value_counts().items())}
        stats["missing_labels"] = int((rows[label] == "").sum())
    if pairs is not None:
        stats["duplicate_rows"] = int(rows.duplicated(subset=[text, label]).sum())
        stats["conflicting_texts"] = int(pairs.loc[pairs[text].duplicated(keep=False), text].nunique())
    return stats


def _prepared_stats(rows: pd.DataFrame, assets: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "rows": len(rows),
        "split_rows": {s: int((rows["split"] == s).sum()) for s in C.SPLITS},
    }
    if "text" in rows.columns:
        stats["duplicate_rows_within_split"] = int(rows.duplicated(subset=["text", "split"]).sum())
        leaks = assets["text_splits"]
        stats["texts_in_several_splits"] = int(leaks.loc[leaks["text"].duplicated(), "text"].nunique())
    if "text_labels" in assets:
        pairs = assets["text_labels"]
        stats["conflicting_texts"] = int(pairs.loc[pairs["text"].duplicated(), "text"].nunique())
    if "class_table" in assets:
        table = assets["class_table"]
        stats["class_counts"] = {
            s: dict(zip(part["label"].astype(str), part["count"].astype(int).tolist(), strict=True))
            for s, part in ((s, table[table["split"] == s]) for s in C.SPLITS)
        }
    return stats

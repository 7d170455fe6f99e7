"""Pipeline stage entry points: read the inputs named in config, validate, write reports, raise on failure."""

from __future__ import annotations

from textclf.config import Config
from textclf.data.io import read_table
from textclf.errors import ValidationFailed
from textclf.validation.report import ValidationReport
from textclf.validation.suites import SPLITS, validate_prepared, validate_raw


def run_validate_raw(cfg: Config) -> ValidationReport:
    """Validate ``paths.raw`` into ``paths.reports/raw``; ValidationFailed after writing reports."""
    frame = read_table(cfg.paths.raw, cfg.data.format)
    report = validate_raw(frame, cfg.data, cfg.validation, cfg.paths.reports / "raw")
    if not report.success:
        raise ValidationFailed(report.summary_text())
    return report


def run_validate_prepared(cfg: Config) -> ValidationReport:
    """Validate ``paths.prepared/{train,val,test}.parquet`` into ``paths.reports/prepared``."""
    splits = {s: read_table(cfg.paths.prepared / f"{s}.parquet", "parquet") for s in SPLITS}
    report = validate_prepared(splits, cfg.data, cfg.validation, cfg.paths.reports / "prepared")
    if not report.success:
        raise ValidationFailed(report.summary_text())
    return report

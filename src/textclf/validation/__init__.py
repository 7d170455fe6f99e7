"""Data validation with Great Expectations: the raw table before prepare, the splits after it.

Importing this package does not import great_expectations (that takes seconds); running a suite does.
"""

from textclf.validation.report import CheckResult, ValidationReport
from textclf.validation.stages import run_validate_prepared, run_validate_raw
from textclf.validation.suites import validate_prepared, validate_raw

__all__ = [
    "CheckResult",
    "ValidationReport",
    "run_validate_prepared",
    "run_validate_raw",
    "validate_prepared",
    "validate_raw",
]

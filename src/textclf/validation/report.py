"""What a validation run found, in a form people (summary_text) and DVC (summary.json) can read."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from textclf import contracts as C

GX_RESULT_FILE = "gx_result.json"


@dataclass(frozen=True)
class CheckResult:
    """One named check: the GX expectation behind it, its verdict and what it saw."""

    name: str
    expectation: str  # GX expectation type, e.g. expect_column_values_to_be_unique
    severity: str  # "error" blocks the pipeline, "warning" is reported only
    success: bool
    mostly: float = 1.0  # share of rows that had to pass (row-level checks)
    observed: Any = None  # GX observed_value, or "N of M rows unexpected" for row-level checks
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    exception: str | None = None  # GX could not evaluate the check (message only)
    description: str = ""

    @property
    def blocking(self) -> bool:
        return not self.success and self.severity == "error"


@dataclass(frozen=True)
class ValidationReport:
    """Verdict of one suite ("raw" or "prepared"); ``success`` means no blocking failure."""

    suite: str
    checks: list[CheckResult]
    labels_seen: list[str]
    stats: dict[str, Any]
    # Checks not run because a column they read is missing (name -> reason); always blocking.
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return not self.skipped and not any(c.blocking for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.blocking]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and not c.blocking]

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "success": self.success,
            "checks": [asdict(c) for c in self.checks],
            "labels_seen": list(self.labels_seen),
            "stats": self.stats,
            "skipped": dict(self.skipped),
        }

    def summary_text(self) -> str:
        """Readable multi-line summary: verdict, each failed check with what it saw, warnings."""
        passed = sum(c.success for c in self.checks)
        verdict = "PASSED" if self.success else "FAILED"
        lines = [
            f"validation of {self.suite} data {verdict}: {passed}/{len(self.checks)} checks passed, "
            f"{len(self.failures)} blocking failure(s), {len(self.warnings)} warning(s)"
        ]
        for c in self.failures:
            lines.extend(_describe(c, "ERROR"))
        for name, reason in sorted(self.skipped.items()):
            lines.append(f"  NOT RUN {name}: {reason}")
        for c in self.warnings:
            lines.extend(_describe(c, "warning"))
        stats = ", ".join(f"{k}={v}" for k, v in sorted(self.stats.items()) if not isinstance(v, dict))
        lines.append(f"  stats: {stats}")
        if self.labels_seen:
            lines.append(f"  labels seen: {', '.join(self.labels_seen)}")
        return "\n".join(lines)


def _describe(c: CheckResult, tag: str) -> list[str]:
    head = f"  {tag} {c.name} ({c.expectation})"
    if c.exception:
        return [f"{head}: could not be evaluated: {c.exception}"]
    lines = [f"{head}: observed {_short(c.observed, 200)}"]
    for ex in c.examples:
        lines.append("      e.g. " + _short(ex, 160))
    return lines


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_summary(report: ValidationReport, out_dir: Path, extra: dict[str, Any]) -> Path:
    """summary.json: sorted keys, no timestamps or run ids — same data and params, same bytes."""
    path = out_dir / C.SUMMARY_FILE
    payload = {**report.to_dict(), **extra}
    path.write_text(
        json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n",
        encoding="utf-8",
    )
    return path

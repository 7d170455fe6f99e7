"""Run planned checks through Great Expectations and turn its results into ``CheckResult``s.

One ephemeral context per call: a pandas data source with one dataframe asset per table (the rows
themselves plus derived tables such as distinct text/label pairs), one suite, validation definition
and checkpoint per asset, and a Data Docs site written under a chosen folder.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from textclf.errors import ConfigError
from textclf.validation.report import CheckResult

log = logging.getLogger(__name__)

DOCS_SITE = "textclf_docs"
ROWS = "rows"  # the asset holding the validated rows themselves; others are derived tables
_GX_SEVERITY = {"error": "critical", "warning": "warning"}
_EXAMPLE_TEXT_CHARS = 200


@dataclass(frozen=True)
class PlannedCheck:
    """A named check bound to the table (asset) it runs on; ``build`` makes the GX expectation."""

    name: str
    asset: str
    severity: str
    mostly: float
    build: Callable[..., Any]  # build(**common_kwargs) -> gx Expectation
    needs: tuple[str, ...] = ()  # columns of the rows asset the check reads


def run_checks(
    suite: str,
    assets: Mapping[str, pd.DataFrame],
    planned: Sequence[PlannedCheck],
    example_rows: int,
    docs_dir: Path,
) -> tuple[list[CheckResult], dict[str, Any]]:
    """Validate every asset with its checks; return results in ``planned`` order and GX's raw JSON."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    if docs_dir.exists():
        shutil.rmtree(docs_dir)  # the docs index lists every page in the folder: drop old runs
    context = _context(docs_dir)
    source = context.data_sources.add_pandas(f"{suite}_source")
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": max(example_rows, 1)}

    by_asset: dict[str, list[PlannedCheck]] = {}
    for check in planned:
        by_asset.setdefault(check.asset, []).append(check)

    built: dict[str, Any] = {}  # check name -> GX expectation
    raw_results: dict[str, Any] = {}
    gx_results: dict[str, Any] = {}  # check name -> ExpectationValidationResult
    for asset_name, checks in by_asset.items():
        batch = source.add_dataframe_asset(asset_name).add_batch_definition_whole_dataframe("all")
        gx_suite = context.suites.add(
            gx.ExpectationSuite(
                name=f"{suite}.{asset_name}",
                expectations=[built.setdefault(c.name, _expectation(c)) for c in checks],
            )
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite}.{asset_name}", data=batch, suite=gx_suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{suite}.{asset_name}",
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
                result_format=result_format,
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": assets[asset_name]})
        for suite_result in outcome.run_results.values():
            raw_results[asset_name] = suite_result.to_json_dict()
            for r in suite_result.results:
                gx_results[(r.expectation_config.meta or {})["check"]] = r

    results = [
        _to_check_result(c, gx_results[c.name], assets[c.asset], example_rows, built[c.name].description)
        for c in planned
    ]
    return results, raw_results


def _context(docs_dir: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        # Without a site of our own, ephemeral Data Docs land in a random temp folder.
        data_docs_sites={
            DOCS_SITE: {
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
            }
        },
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        analytics_enabled=False,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _expectation(check: PlannedCheck) -> Any:
    kwargs: dict[str, Any] = {
        "meta": {"check": check.name, "severity": check.severity},
        "severity": _GX_SEVERITY[check.severity],
    }
    expectation = check.build(**kwargs)
    if check.mostly < 1.0:
        if "mostly" not in type(expectation).__fields__:
            raise ConfigError(
                f"validation check {check.name!r} is not row-level: it takes no 'mostly' tolerance"
            )
        expectation.mostly = check.mostly
    return expectation


def _to_check_result(
    check: PlannedCheck, r: Any, frame: pd.DataFrame, example_rows: int, description: str | None
) -> CheckResult:
    result: dict[str, Any] = dict(r.result or {})
    exception = _exception_message(r.exception_info)
    count = result.get("unexpected_count")
    percent = result.get("unexpected_percent")
    if "observed_value" in result:
        observed = _jsonable(result["observed_value"])
    elif count is not None:
        observed = f"{count} of {result.get('element_count')} rows unexpected ({percent or 0:.3f}%)"
    else:
        observed = None
    return CheckResult(
        name=check.name,
        expectation=r.expectation_config.type,
        severity=check.severity,
        success=bool(r.success),
        mostly=check.mostly,
        observed=observed,
        unexpected_count=None if count is None else int(count),
        unexpected_percent=None if percent is None else round(float(percent), 4),
        examples=[] if r.success else _examples(result, frame, example_rows, check.asset == ROWS),
        exception=exception,
        description=description or "",
    )


def _exception_message(info: Any) -> str | None:
    """GX reports a failed metric (e.g. a missing column) here instead of raising."""
    if not info:
        return None
    entries = info.values() if "raised_exception" not in info else [info]
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            message = str(entry.get("exception_message") or "").strip()
            return message.splitlines()[0] if message else "GX raised an exception"
    return None


def _examples(
    result: Mapping[str, Any], frame: pd.DataFrame, limit: int, with_row: bool
) -> list[dict[str, Any]]:
    """The first unexpected rows; ``row`` (0-based position in the data) only for the rows asset."""
    if limit <= 0:
        return []
    indexes = result.get("partial_unexpected_index_list")
    if indexes:
        rows = frame.loc[list(indexes)[:limit]]
        return [
            {**({"row": int(i)} if with_row else {}), **{str(k): _jsonable(v) for k, v in row.items()}}
            for i, row in rows.iterrows()
        ]
    values = result.get("partial_unexpected_list") or []
    return [{"value": _jsonable(v)} for v in list(values)[:limit]]


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= _EXAMPLE_TEXT_CHARS else value[: _EXAMPLE_TEXT_CHARS - 1] + "…"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None  # NaN is not JSON
    if value is None or isinstance(value, bool | int | float):
        return value
    if pd.isna(value):
        return None
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return str(value)

"""``textclf lineage``: follow a model version or run back to its data and code.

Chain: registered model version (name, version, aliases) -> run (experiment, status) -> datasets
(name, digest, source, context) -> raw data (``data.dvc`` md5) -> code (git commit). Every link is
shown, present or MISSING with the reason, so an incomplete chain is visible rather than an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from textclf.config import Config
from textclf.errors import TextclfError
from textclf.tracking.lineage import (
    TAG_BASE_MODEL,
    TAG_BASE_MODEL_REVISION,
    TAG_DATA_DVC_MD5,
    TAG_DVC_LOCK_PREFIX,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_PARAMS_HASH,
    TAG_PREFECT_FLOW_RUN_ID,
)
from textclf.tracking.store import client as make_client

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")
_CONTEXT_TAG = "mlflow.data.context"
_INFO_TAGS = {
    "params hash": TAG_PARAMS_HASH,
    "base model": TAG_BASE_MODEL,
    "base model revision": TAG_BASE_MODEL_REVISION,
    "prefect flow run": TAG_PREFECT_FLOW_RUN_ID,
}


@dataclass(frozen=True)
class LineageLink:
    name: str
    value: str | None
    reason: str = ""  # why the link is missing

    @property
    def present(self) -> bool:
        return self.value is not None


@dataclass
class LineageReport:
    ref: str
    links: list[LineageLink] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)  # not part of the chain, shown for context
    warnings: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[LineageLink]:
        return [link for link in self.links if not link.present]

    @property
    def complete(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "complete": self.complete,
            "links": [{"name": x.name, "value": x.value, "reason": x.reason} for x in self.links],
            "info": dict(self.info),
            "warnings": list(self.warnings),
        }

    def render(self) -> str:
        width = max([len(x.name) for x in self.links] + [len(k) for k in self.info] + [10])
        lines = [f"lineage of {self.ref}"]
        for link in self.links:
            shown = link.value if link.present else f"MISSING ({link.reason})"
            lines.append(f"  {link.name:<{width}}  {shown}")
        for key, value in self.info.items():
            lines.append(f"  {key:<{width}}  {value}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        if self.complete:
            lines.append("lineage complete")
        else:
            lines.append("missing links: " + ", ".join(x.name for x in self.missing))
        return "\n".join(lines)


@dataclass(frozen=True)
class _ModelRef:
    name: str
    version: str | None = None
    alias: str | None = None


def _parse_ref(ref: str) -> _ModelRef | str:
    """A registered-model reference, or a run id / logged-model id string."""
    ref = ref.strip()
    if ref.startswith("models:/"):
        body = ref[len("models:/") :].strip("/")
        if _MODEL_ID.match(body):
            return body
        if "@" in body:
            name, _, alias = body.partition("@")
            if name and alias and "/" not in alias:
                return _ModelRef(name=name, alias=alias)
        else:
            name, _, version = body.rpartition("/")
            if name and version.isdigit():
                return _ModelRef(name=name, version=version)
        raise TextclfError(
            f"bad model reference {ref!r}: expected models:/<name>/<version>, models:/<name>@<alias> "
            "or models:/m-<id>"
        )
    if ref.startswith("runs:/"):
        ref = ref[len("runs:/") :].split("/", 1)[0]
    if _RUN_ID.match(ref) or _MODEL_ID.match(ref):
        return ref
    raise TextclfError(
        f"not a run id or model reference: {ref!r} (expected a 32-hex run id, runs:/<id>, "
        "models:/<name>/<version> or models:/<name>@<alias>)"
    )


def _resolve_model_version(c: MlflowClient, mref: _ModelRef) -> Any:
    try:
        if mref.alias is not None:
            return c.get_model_version_by_alias(mref.name, mref.alias)
        return c.get_model_version(mref.name, mref.version)
    except MlflowException as err:
        what = f"alias @{mref.alias}" if mref.alias else f"version {mref.version}"
        raise TextclfError(f"registered model {mref.name!r} has no {what}: {err.message}") from None


def _model_version_link(c: MlflowClient, mv: Any) -> LineageLink:
    # search/get may return empty aliases; the registered model holds the alias map.
    try:
        aliases = sorted(
            a for a, v in c.get_registered_model(mv.name).aliases.items() if str(v) == str(mv.version)
        )
    except MlflowException:
        aliases = list(mv.aliases or [])
    shown = f"{mv.name} v{mv.version}"
    shown += f" (aliases: {', '.join('@' + a for a in aliases)})" if aliases else " (no aliases)"
    return LineageLink("model version", f"{shown} [{mv.source}]")


def _run_id_of_model(c: MlflowClient, model_id: str) -> str | None:
    try:
        return c.get_logged_model(model_id).source_run_id
    except MlflowException:
        return None


def _source_uri(source: str) -> str:
    """MLflow stores a dataset source as JSON (``{"uri": ...}`` for paths); show the URI itself."""
    try:
        parsed = json.loads(source)
    except (TypeError, ValueError):
        return str(source)
    return str(parsed.get("uri", source)) if isinstance(parsed, dict) else str(source)


def _dataset_links(run: Any) -> list[LineageLink]:
    inputs = run.inputs.dataset_inputs if run.inputs else []
    if not inputs:
        return [LineageLink("datasets", None, "run logged no dataset inputs")]
    links = []
    for di in inputs:
        ds = di.dataset
        context = next((t.value for t in di.tags if t.key == _CONTEXT_TAG), "?")
        source = _source_uri(ds.source)
        links.append(
            LineageLink(f"dataset {ds.name}", f"digest={ds.digest} source={source} context={context}")
        )
    return links


def _tag_link(tags: dict[str, str], name: str, key: str, reason: str) -> LineageLink:
    value = tags.get(key)
    return LineageLink(name, value) if value else LineageLink(name, None, reason)


def lineage_report(ref: str, cfg: Config, root: Path) -> LineageReport:
    """Resolve ``ref`` (run id, ``runs:/<id>``, ``models:/<name>/<version>``, ``models:/<name>@<alias>``
    or ``models:/m-<id>``) against the configured store and build the lineage chain."""
    parsed = _parse_ref(ref)
    c = make_client(cfg, Path(root))
    report = LineageReport(ref=ref)

    run_id: str | None
    if isinstance(parsed, _ModelRef):
        mv = _resolve_model_version(c, parsed)
        report.links.append(_model_version_link(c, mv))
        run_id = mv.run_id
        if not run_id and str(mv.source).startswith("models:/"):
            run_id = _run_id_of_model(c, str(mv.source).removeprefix("models:/").strip("/"))
        if not run_id:
            report.links.append(LineageLink("run", None, "model version has no source run"))
            return report
    elif _MODEL_ID.match(parsed):
        run_id = _run_id_of_model(c, parsed)
        if run_id is None:
            raise TextclfError(f"logged model {parsed} not found in {c.tracking_uri}")
    else:
        run_id = parsed

    try:
        run = c.get_run(run_id)
    except MlflowException as err:
        if isinstance(parsed, _ModelRef):
            report.links.append(LineageLink("run", None, f"run {run_id} not found: {err.message}"))
            return report
        raise TextclfError(f"run {run_id} not found in {c.tracking_uri}") from None

    try:
        exp_name = c.get_experiment(run.info.experiment_id).name
    except MlflowException:
        exp_name = "?"
    info = run.info
    shown = f"{info.run_id} (experiment {exp_name!r} [{info.experiment_id}], status {info.status})"
    report.links.append(LineageLink("run", shown))
    report.links.extend(_dataset_links(run))

    tags = dict(run.data.tags)
    report.links.append(
        _tag_link(
            tags,
            "data.dvc md5",
            TAG_DATA_DVC_MD5,
            f"no {TAG_DATA_DVC_MD5} tag: {cfg.paths.data_dir}.dvc was absent when the run was logged",
        )
    )
    git = _tag_link(
        tags,
        "git commit",
        TAG_GIT_COMMIT,
        f"no {TAG_GIT_COMMIT} tag: the run was not logged from a git commit",
    )
    if git.present and tags.get(TAG_GIT_DIRTY) == "true":
        report.warnings.append("the working tree had uncommitted changes when the run was logged")
        git = LineageLink(git.name, f"{git.value} (dirty)")
    report.links.append(git)

    for key in sorted(k for k in tags if k.startswith(TAG_DVC_LOCK_PREFIX)):
        report.info[f"dvc.lock {key.removeprefix(TAG_DVC_LOCK_PREFIX)}"] = tags[key]
    for label, key in _INFO_TAGS.items():
        if tags.get(key):
            report.info[label] = tags[key]
    return report

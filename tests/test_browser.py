"""What a person sees, checked in a real headless Chromium against real servers.

One tiny project runs the README's main job (`textclf run`) against a real `prefect server`; then the
MLflow UI (`mlflow server` on the project's store), the Bento (`bentoml serve` of the champion) and the
Data Docs are opened like a user would. Every test saves a screenshot: to a temp folder, or to
``$TEXTCLF_SCREENSHOTS`` (``TEXTCLF_SCREENSHOTS=docs/img .venv/bin/pytest -m browser`` regenerates the
README's pictures). Needs Debian's chromium (`.ci/run` installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from projects import TINY, env, make_project, toy_corpus

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
BIN = Path(sys.executable).parent


def _start(cmd: list[str], log: Path, env_: dict[str, str], health: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, env=env_, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{cmd[0]} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{health} not ready:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Iterator[dict]:
    from textclf.serving.package import free_port, served

    if not CHROMIUM.is_file():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    tmp = tmp_path_factory.mktemp("browser")
    proj = make_project(tmp, repo_root, toy_corpus(), TINY)
    prefect_port, mlflow_port = free_port(), free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    base_env = {
        **env(),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_HOME": str(tmp / "prefect"),
    }
    procs = [
        _start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            tmp / "prefect.log",
            base_env,
            f"{api}/health",
        )
    ]
    try:
        run = subprocess.run(
            [str(BIN / "textclf"), "run"], cwd=proj, env=base_env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        mlflow_env = {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        procs.append(
            _start(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{proj}/mlflow/mlflow.db",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                ],
                tmp / "mlflow.log",
                mlflow_env,
                f"http://127.0.0.1:{mlflow_port}/health",
            )
        )
        record = json.loads((proj / "artifacts/train/mlflow_run.json").read_text())
        flow_runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 5}, timeout=10).json()
        bento = next(line.split()[-1] for line in run.stdout.splitlines() if "bento textclf:" in line)
        # A browser sends no bearer token with the Swagger UI's own page loads: this loopback
        # server runs without authentication, explicitly (the token checks are test_serving's).
        with served(bento, tmp / "bento.log", env={"TEXTCLF_SERVE_AUTH": "none"}) as bento_url:
            yield {
                "proj": proj,
                "mlflow": f"http://127.0.0.1:{mlflow_port}",
                "prefect": f"http://127.0.0.1:{prefect_port}",
                "bento": bento_url,
                "run_id": record["run_id"],
                "flow_run_id": flow_runs[0]["id"],
            }
    finally:
        for proc in procs:
            _stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request, tmp_path: Path) -> Iterator:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield page
    out = Path(os.environ.get("TEXTCLF_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{request.node.name.removeprefix('test_')}.png"))
    page.close()


def _close_assistant(page) -> None:
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def test_mlflow_run_page_shows_the_loss_curve_and_datasets(site: dict, page) -> None:
    from textclf.config import load_config
    from textclf.tracking.store import client

    experiment = (
        client(load_config(site["proj"] / "params.yaml"), site["proj"])
        .get_run(site["run_id"])
        .info.experiment_id
    )
    page.goto(f"{site['mlflow']}/#/experiments/{experiment}/runs/{site['run_id']}")
    page.get_by_text("textclf.gate.decision").first.wait_for(timeout=60_000)  # the run's tags are shown
    body = page.inner_text("body")
    assert (
        "train (" in body and "Datasets" in body and "textclf-sentiment" in body
    )  # inputs, registered model
    _close_assistant(page)
    page.get_by_text("Model metrics", exact=True).first.click()
    page.get_by_placeholder("Search metric charts").fill("loss")
    page.get_by_text("val_loss", exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("(loss)").first.wait_for(timeout=30_000)  # the step-wise loss curve's legend
    assert page.locator(".js-plotly-plot").count() >= 3  # loss, train_loss, val_loss charts


def test_registered_model_page_shows_the_champion_alias(site: dict, page) -> None:
    page.goto(f"{site['mlflow']}/#/models/textclf-sentiment")
    page.get_by_text("champion").first.wait_for(timeout=60_000)
    _close_assistant(page)
    body = page.inner_text("body")
    assert "Version 1" in body and "champion" in body and "textclf.gate.result" in body


def test_prefect_flow_run_page_shows_the_report_artifact(site: dict, page) -> None:
    page.goto(f"{site['prefect']}/runs/flow-run/{site['flow_run_id']}")
    page.get_by_text("Completed").first.wait_for(timeout=60_000)
    page.get_by_text("Running stage 'train'").first.wait_for(timeout=30_000)  # the stages' output in the logs
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("textclf-run-report").first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert "test-metrics" in body and "mlflow-run" in body and "data-docs-raw" in body


def test_swagger_lists_classify_and_try_it_out_predicts(site: dict, page) -> None:
    page.goto(f"{site['bento']}/")
    operation = page.locator(".opblock-summary-path", has_text="/classify").first
    operation.wait_for(timeout=60_000)
    assert page.locator(".opblock-summary-path", has_text="/feedback").count() == 1
    operation.click()
    page.get_by_role("button", name="Try it out").first.click()
    page.get_by_role("button", name="Execute").first.click()
    status = page.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip().startswith("200")
    answer = page.locator(".live-responses-table").first
    assert '"probabilities"' in answer.inner_text() and '"label"' in answer.inner_text()
    answer.scroll_into_view_if_needed()


def test_data_docs_show_the_expectation_results(site: dict, page) -> None:
    docs = site["proj"] / "artifacts/reports/raw/data_docs"
    result = next((docs / "validations").rglob("*rows.html"))
    page.goto(result.as_uri())
    page.get_by_text("Expectation Validation Result").wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert "values must belong to this set" in body and "Successful Expectations" in body

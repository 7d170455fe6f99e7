"""Secrets the flow needs live in Prefect blocks on the server, under Prefect's test harness (a real API):
the git token workers clone with (a Secret block the deployment references) and the failure notifier
(a notification block named by flow.notification_block)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from http.server import HTTPServer
from pathlib import Path

import pytest
import yaml

from projects import Webhook, params, run

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
# The deploy script is an entry point beside the flows, not a module of the library.
_spec = importlib.util.spec_from_file_location("textclf_deploy", REPO_ROOT / "flows" / "deploy.py")
assert _spec is not None and _spec.loader is not None
deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy)

TOKEN = "ghp_textclfTestToken0123456789"
ORIGIN = f"https://x-access-token:{TOKEN}@git.example.invalid/team/textclf.git"


def _full(overrides: dict) -> str:
    """The repository's params.yaml with ``overrides``: every key is required."""
    return yaml.safe_dump(params(overrides).model_dump(mode="json"), allow_unicode=True)


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.mark.parametrize(
    "url", ["/srv/git/textclf.git", "git@github.com:team/textclf.git", "https://github.com/team/textclf.git"]
)
def test_a_source_without_credentials_is_cloned_as_is(url: str) -> None:
    assert deploy.git_source(url) == url


def test_a_token_in_the_origin_goes_into_a_secret_block_not_the_deployment(
    harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:  # noqa: ANN001
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.steps.core import run_steps

    # A checkout whose origin carries a token. Git reaches the "remote" (a local bare repo) only through
    # that exact URL, token included: a clone that lost the credentials would fail.
    checkout, remote = tmp_path / "checkout", tmp_path / "remote.git"
    (checkout / "flows").mkdir(parents=True)
    (checkout / "flows" / "pipeline.py").write_text(
        "from prefect import flow\n\n\n@flow(name='training_pipeline')\n"
        "def training_pipeline(params: str = 'params.yaml') -> None:\n    pass\n"
    )
    (checkout / "flows" / "monitor.py").write_text(
        "from prefect import flow\n\n\n@flow(name='monitor')\n"
        "def monitor_flow(since_minutes: float = 60, params: str = 'params.yaml') -> None:\n    pass\n"
    )
    (checkout / "params.yaml").write_text(_full({}))
    (checkout / "missing-notifier.yaml").write_text(
        _full({"flow": {"notification_block": "custom-webhook/nobody-saved-this"}})
    )
    run(["git", "init", "-q", "-b", "main"], checkout)
    run(["git", "add", "-A"], checkout)
    run(["git", "commit", "-qm", "tiny flow"], checkout)
    run(["git", "clone", "-q", "--bare", str(checkout), str(remote)], tmp_path)
    run(["git", "remote", "add", "origin", ORIGIN], checkout)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.{remote.as_uri()}.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", ORIGIN)
    monkeypatch.delenv(deploy.ENV_GIT_TOKEN, raising=False)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="textclf", type="process"))

    args = ["--project-dir", str(checkout), "--pool", "textclf"]
    with pytest.raises(ValueError, match="nobody-saved-this"):  # a notifier that is not there: no deployment
        deploy.main([*args, "--params", "missing-notifier.yaml"])
    with caplog.at_level(logging.DEBUG):
        deploy.main(args)

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("training_pipeline/nightly")
        monitor = client.read_deployment_by_name("monitor/monitor")
    assert monitor.pull_steps == deployment.pull_steps
    assert TOKEN not in monitor.model_dump_json()
    assert deployment.pull_steps == [
        {
            "prefect.deployments.steps.git_clone": {
                "repository": "https://git.example.invalid/team/textclf.git",
                "branch": None,
                "credentials": {
                    "username": "x-access-token",
                    "access_token": "{{ prefect.blocks.secret.textclf-git-token }}",
                },
            }
        }
    ]
    assert TOKEN not in deployment.model_dump_json()
    assert Secret.load(deploy.GIT_CREDENTIALS_BLOCK).get() == TOKEN
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + caplog.text

    # What a worker does before a run: resolve the block reference and clone with the token.
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "worker")
    pulled = asyncio.run(run_steps(deployment.pull_steps))
    assert (tmp_path / "worker" / pulled["directory"] / "flows" / "pipeline.py").is_file()


@pytest.fixture(scope="module")
def failing_flow(harness):
    """A flow with the training pipeline's own failure and crash hooks, failing at once."""
    from prefect import flow
    from prefect.flows import load_flow_from_entrypoint

    pipeline = load_flow_from_entrypoint(f"{REPO_ROOT / 'flows' / 'pipeline.py'}:training_pipeline")

    @flow(on_failure=pipeline.on_failure_hooks, on_crashed=pipeline.on_crashed_hooks)
    def broken(project_dir: str) -> None:
        raise RuntimeError("disk full")

    return broken


def _params(project: Path, block: str) -> str:
    (project / "params.yaml").write_text(_full({"flow": {"notification_block": block}}))
    return str(project)


def test_a_failed_run_is_sent_through_the_saved_notification_block(failing_flow, tmp_path: Path) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    Webhook.received.clear()  # one list per process: shared by the tests that use it
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    CustomWebhookNotificationBlock(
        name="textclf", url=f"http://127.0.0.1:{server.server_port}/hook", json_data={"text": "{{body}}"}
    ).save("textclf-failures")
    try:
        state = failing_flow(_params(tmp_path, "custom-webhook/textclf-failures"), return_state=True)
    finally:
        server.shutdown()
    assert state.is_failed()
    assert len(Webhook.received) == 1 and "disk full" in Webhook.received[0]["text"]


def test_a_missing_notification_block_is_a_warning_not_another_failure(
    failing_flow, tmp_path: Path, caplog
) -> None:  # noqa: ANN001
    with caplog.at_level(logging.WARNING, logger="textclf.flow"):
        state = failing_flow(_params(tmp_path, "custom-webhook/nobody-saved-this"), return_state=True)
    assert state.is_failed() and "disk full" in state.message
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("nobody-saved-this" in m and "only logged" in m for m in warned), warned

"""Fast checks of the stack's lock-down that need no running server: compose.yaml read as YAML, the
supervisor's secret files and worker environment, and `stack down` never signalling a stranger."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from projects import BIN, make_project, params, run, section, toy_corpus

_spec = importlib.util.spec_from_file_location(
    "textclf_stack_sec", Path(__file__).resolve().parents[1] / "flows" / "stack.py"
)
assert _spec is not None and _spec.loader is not None
S = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(S)

SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ROOT_USER")


@pytest.fixture(scope="module")
def compose(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "compose.yaml").read_text())["services"]


def test_compose_publishes_on_loopback_only(compose: dict) -> None:
    ports = {name: svc.get("ports", []) for name, svc in compose.items()}
    assert any(ports.values())
    for name, published in ports.items():
        for port in published:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_secrets_have_no_defaults(compose: dict, repo_root: Path) -> None:
    text = (repo_root / "compose.yaml").read_text()
    assert ":-" not in "".join(re.findall(r"\$\{[^}]*\}", text)), "a variable falls back to a default"
    for name, svc in compose.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{(\w+):\?set \1\}", str(value)), f"{name}.{key} = {value!r}"


def test_compose_mlflow_and_prefect_ask_who_calls(compose: dict) -> None:
    assert "--app-name basic-auth" in compose["mlflow"]["command"]
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in compose["mlflow"]["environment"]
    server = compose["prefect-server"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"].startswith("${")
    assert server["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] == "true"
    assert server["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] != "*"
    worker = compose["prefect-worker"]["environment"]
    assert worker["PREFECT_API_AUTH_STRING"] == server["PREFECT_SERVER_API_AUTH_STRING"]
    assert not {"PREFECT_API_DATABASE_CONNECTION_URL", "MLFLOW_BACKEND_STORE_URI", "PGPASSWORD"} & set(worker)
    assert worker["AWS_ACCESS_KEY_ID"] != compose["minio"]["environment"]["MINIO_ROOT_USER"]


def test_compose_services_run_as_non_root(compose: dict) -> None:
    for name, svc in compose.items():
        if name != "postgres":  # its entrypoint drops to the postgres user itself
            assert str(svc.get("user", "0")).split(":")[0] not in ("0", "root"), name


def test_secrets_and_env_are_private(tmp_path: Path) -> None:
    stack = S.Stack(tmp_path, section("mlflow"))
    stack._save()  # writes .stack/env (generating the secrets it names)
    files = [stack.dir / "env", *(stack.dir / "secrets").iterdir()]
    assert len(files) > 4
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(stack.dir.stat().st_mode) == 0o700
    assert stack.secret("prefect-auth") == stack.secret("prefect-auth")  # generated once


def test_worker_environment_is_a_short_explicit_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "caller-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "caller-root-key")
    stack = S.Stack(tmp_path, section("mlflow"))
    env = stack.worker_env()
    assert "caller-secret" not in env.values() and "caller-root-key" not in env.values()
    assert not [k for k in env if "DATABASE" in k or k.startswith(("PG", "MLFLOW_BACKEND"))]
    assert env["AWS_ACCESS_KEY_ID"] == S.S3_KEYS["worker"]
    assert env["AWS_SECRET_ACCESS_KEY"] != stack.mlflow_env()["AWS_SECRET_ACCESS_KEY"]
    assert env["PREFECT_API_AUTH_STRING"] == stack.prefect_server_env()["PREFECT_SERVER_API_AUTH_STRING"]
    assert env["MLFLOW_TRACKING_USERNAME"] == "trainer" and "@" not in env["MLFLOW_TRACKING_URI"]
    assert len(env) < 40


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def test_stack_down_leaves_a_stranger_holding_a_saved_pid_alive(tmp_path: Path) -> None:
    stranger = _sleeper()
    try:
        started = psutil.Process(stranger.pid).create_time()
        state = tmp_path / ".stack" / "state.json"
        state.parent.mkdir()
        ports = {s: 1 for s in S.SERVICES[:4]}
        pids = {
            "mlflow": {"pid": stranger.pid, "started": started - 3600},  # the pid was reused since
            "s3": stranger.pid,  # an old state file: a pid without its start time is not trusted
        }
        state.write_text(json.dumps({"ports": ports, "pids": pids}))
        stack = S.Stack(tmp_path, section("mlflow"))
        assert not any(stack.running().values())
        stack.down()
        time.sleep(0.5)
        assert stranger.poll() is None, "stack down signalled a process it did not start"
        assert json.loads(state.read_text())["pids"] == {}

        # the same pid with its real start time is ours: down stops it
        state.write_text(
            json.dumps({"ports": ports, "pids": {"mlflow": {"pid": stranger.pid, "started": started}}})
        )
        stack = S.Stack(tmp_path, section("mlflow"))
        assert stack.running()["mlflow"]
        stack.down()
        assert stranger.wait(10) is not None
    finally:
        if stranger.poll() is None:
            stranger.kill()
        stranger.wait()


def test_published_tracking_uris_carry_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from textclf.tracking.store import gate_account, redact

    assert redact("http://u:secret@mlflow:5000/x?y=1") == "http://mlflow:5000/x?y=1"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert "secret" not in redact("https://tok:secret@host")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trainer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "t-pw")
    monkeypatch.setenv("TEXTCLF_GATE_MLFLOW_USERNAME", "gate")
    monkeypatch.setenv("TEXTCLF_GATE_MLFLOW_PASSWORD", "g-pw")
    with gate_account():
        assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (
            "gate",
            "g-pw",
        )
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (
        "trainer",
        "t-pw",
    )


def test_promote_and_rollback_repackage_under_the_gate_account(monkeypatch: pytest.MonkeyPatch) -> None:
    """`textclf promote/rollback` package the new champion (a version tag write) as the gate, not as the
    caller: a reader's shell with the gate's account named completes both (seen on the real stack)."""
    from textclf import cli
    from textclf.serving import release

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("TEXTCLF_GATE_MLFLOW_USERNAME", "gate")
    monkeypatch.setenv("TEXTCLF_GATE_MLFLOW_PASSWORD", "g-pw")
    monkeypatch.setattr(release, "champion_bento", lambda *_: os.environ["MLFLOW_TRACKING_USERNAME"])
    assert cli._serving_line(params()) == "serve gate (textclf serve)"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "reader"


def test_a_corrupted_object_in_the_dvc_remote_fails_the_pull(tmp_path: Path, repo_root: Path) -> None:
    """The team remote is configured with `verify true` (docs/scale-out.md): a pull re-hashes what it
    downloads, so an object changed in the remote fails the pull and nothing is checked out."""
    dvc = str(BIN / "dvc")
    a = make_project(tmp_path / "a", repo_root, toy_corpus())
    run([dvc, "remote", "add", "-d", "team", str(tmp_path / "remote")], a)
    run([dvc, "remote", "modify", "team", "verify", "true"], a)
    run(["git", "commit", "-qam", "team remote"], a)
    run([dvc, "push", "-q"], a)
    csv = next(p for p in (tmp_path / "remote").rglob("*") if p.is_file() and p.suffix != ".dir")
    csv.chmod(0o644)
    csv.write_bytes(csv.read_bytes() + "差评,positive\n".encode())

    b = tmp_path / "b"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    pulled = run([dvc, "pull"], b, check=False)
    assert pulled.returncode != 0, pulled.stdout
    assert not (b / "data" / "reviews.csv").exists()

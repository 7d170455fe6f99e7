"""compose.yaml for real: Debian's docker-compose starts it on a private dockerd, and the test checks
the lock-down against the running containers and runs one flow on the compose worker.

No container registry is reachable here, so ``tests/compose/override.yaml`` swaps the images that
cannot be pulled (PostgreSQL: Debian's postgresql-15 behind the official image's interface; MinIO:
moto's S3 server) and everything else is compose.yaml as written. ``textclf-stack`` is built from
``docker/stack.Dockerfile`` on the offline stand-in for ``python:3.11-slim`` that the image tier also
uses, with the project's locked wheels (``constraints.txt``) as its package index, cached in
$TEXTCLF_IMAGE_CACHE. Needs root, docker.io, debootstrap and docker-compose (`.ci/run` installs them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import httpx
import pytest

from projects import wait_for

pytestmark = pytest.mark.compose
PROJECT = "textclf-compose-test"
MLFLOW, PREFECT, S3 = "http://127.0.0.1:5000", "http://127.0.0.1:4200/api", "http://127.0.0.1:9000"
PUBLISHED = (5000, 4200, 9000, 9001)  # compose.yaml's fixed host ports (all on 127.0.0.1)
PYTHON_SERVICES = ("mlflow", "prefect-server", "prefect-worker")
TIMES: dict[str, float] = {}


@contextmanager
def _timed(name: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    TIMES[name] = round(time.monotonic() - start, 1)


def _status(url: str, **kw: object) -> int:
    try:
        return httpx.get(url, timeout=10, **kw).status_code  # type: ignore[arg-type]
    except httpx.HTTPError:
        return 0


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _secrets(repo_root: Path) -> dict[str, str]:
    """docs/stack.env.example filled in the way it says: every empty value generated."""
    out = {}
    for line in (repo_root / "docs" / "stack.env.example").read_text().splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key] = value or secrets.token_urlsafe(24)
    out["PREFECT_AUTH_STRING"] = f"textclf:{secrets.token_urlsafe(24)}"  # user:password
    return out


def _compose(envfile: Path) -> list[str]:
    return ["docker-compose", "-p", PROJECT, "--env-file", str(envfile), "-f", "compose.yaml"]


def _origin(tmp: Path, repo_root: Path, denv: dict[str, str]) -> Path:
    """A bare git repo holding tests/compose/worker_flow.py, owned by the containers' uid (git refuses
    a repository owned by someone else)."""
    work, origin = tmp / "flow-src", tmp / "origin.git"
    work.mkdir()
    (work / "flow.py").write_text((repo_root / "tests" / "compose" / "worker_flow.py").read_text())
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "flow.py"],
        ["git", "commit", "-qm", "the compose worker's flow"],
        ["git", "clone", "-q", "--bare", str(work), str(origin)],
    ):
        subprocess.run(cmd, cwd=work, env=denv, check=True, capture_output=True)
    subprocess.run(["chown", "-R", "10001:10001", str(origin)], check=True)
    return origin


@pytest.fixture(scope="module")
def compose(
    dockerd: dict[str, str], repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    if not shutil.which("docker-compose"):
        pytest.fail("needs docker-compose (apt-get install docker-compose; .ci/run does it)")
    busy = [p for p in PUBLISHED if _listening(p)]
    assert not busy, f"compose.yaml publishes fixed ports; these are taken on 127.0.0.1: {busy}"
    tmp = tmp_path_factory.mktemp("compose")
    # the locked environment, the build backend, and async-timeout: redis needs it below Python 3.11.3,
    # which the stand-in's Debian Python (3.11.2) is and this venv's Python may not be
    requirements = tmp / "stack-requirements.txt"
    extra = "setuptools>=69\nwheel\nasync-timeout>=4.0.3\n"
    requirements.write_text((repo_root / "constraints.txt").read_text() + extra)
    with _timed("base_image_s"):
        base = subprocess.run(
            ["bash", str(repo_root / "scripts" / "offline-base-image.sh"), str(requirements)],
            env={**dockerd, "PYTHON": sys.executable, "WHEELS": "wheels-stack"},
            capture_output=True,
            text=True,
        )
    assert base.returncode == 0, base.stderr[-3000:]
    origin = _origin(tmp, repo_root, dockerd)
    values = _secrets(repo_root)
    envfile = tmp / "compose.env"
    envfile.touch(mode=0o600)
    envfile.write_text("".join(f"{k}={v}\n" for k, v in {**values, "TEXTCLF_TEST_ORIGIN": origin}.items()))
    cmd = [*_compose(envfile), "-f", "tests/compose/override.yaml"]

    def dc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*cmd, *args], cwd=repo_root, env=dockerd, capture_output=True, text=True)
        assert not check or done.returncode == 0, f"{args}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done

    def container(service: str) -> dict:
        cid = dc("ps", "-a", "-q", service).stdout.strip()
        return json.loads(
            subprocess.run(["docker", "inspect", cid], env=dockerd, capture_output=True, text=True).stdout
        )[0]

    with _timed("build_s"):
        dc("build")
    try:
        with _timed("up_s"):  # docker-compose waits for postgres' health and the buckets job here
            dc("up", "-d")
        with _timed("ready_s"):
            wait_for(lambda: _status(f"{MLFLOW}/health") == 200, 300, "MLflow's /health")
            wait_for(lambda: _status(f"{PREFECT}/health") == 200, 300, "Prefect's /api/health")
            wait_for(
                lambda: container("mlflow-accounts")["State"]["Status"] == "exited", 300, "mlflow-accounts"
            )
            # the worker creates its pool once it reaches the server (it may start first)
            auth = tuple(values["PREFECT_AUTH_STRING"].split(":", 1))
            pool = f"{PREFECT}/work_pools/textclf"
            wait_for(lambda: _status(pool, auth=auth) == 200, 180, "the worker to create its pool")
        accounts = container("mlflow-accounts")["State"]
        assert accounts["ExitCode"] == 0, dc("logs", "mlflow-accounts").stdout[-3000:]
        yield {
            "secrets": values,
            "origin": origin,
            "dc": dc,
            "container": container,
            "repo_root": repo_root,
            "env": dockerd,
        }
    finally:
        (tmp / "compose.log").write_text(dc("logs", "--no-color", check=False).stdout)
        with _timed("down_s"):
            dc("down", "-v", "--remove-orphans", check=False)
        print(f"compose tier: logs in {tmp / 'compose.log'}; times {json.dumps(TIMES)}")


def test_compose_refuses_anonymous_callers(compose: dict) -> None:
    s, refusals = compose["secrets"], {}

    def got(what: str, status: int) -> int:
        refusals[what] = status
        return status

    # MLflow's basic-auth app: anonymous and a wrong password 401; the accounts job's reader gets in
    search = f"{MLFLOW}/api/2.0/mlflow/registered-models/search"
    assert got("mlflow anonymous search", _status(search)) == 401
    assert got("mlflow wrong password", _status(search, auth=("reader", "wrong"))) == 401
    assert got("mlflow reader search", _status(search, auth=("reader", s["MLFLOW_READER_PASSWORD"]))) == 200
    # Prefect's auth string: health open, the API closed without it and open with it
    user, password = s["PREFECT_AUTH_STRING"].split(":", 1)
    assert got("prefect anonymous health", _status(f"{PREFECT}/health")) == 200
    token = _status(f"{PREFECT}/csrf-token", params={"client": "intruder"})
    assert got("prefect anonymous GET csrf-token", token) == 401  # so no anonymous POST gets a token
    filt = httpx.post(f"{PREFECT}/deployments/filter", json={}, timeout=30).status_code
    assert got("prefect anonymous deployment filter", filt) in (401, 403)  # 403: CSRF answers first
    pool = f"{PREFECT}/work_pools/textclf"
    assert got("prefect anonymous work pool", _status(pool)) == 401
    assert got("prefect work pool with the auth string", _status(pool, auth=(user, password))) == 200

    # every published port is on loopback; the Python services run as uid 10001
    for service in ("minio", "mlflow", "prefect-server"):
        ports = compose["container"](service)["NetworkSettings"]["Ports"]
        bound = [b["HostIp"] for bindings in ports.values() if bindings for b in bindings]
        assert bound and set(bound) == {"127.0.0.1"}, (service, ports)
    for service in PYTHON_SERVICES:
        cid = compose["container"](service)["Id"]
        uid = subprocess.run(
            ["docker", "exec", cid, "id", "-u"], env=compose["env"], capture_output=True, text=True
        ).stdout.strip()
        assert uid == "10001", (service, uid)
    # the worker holds no database URL, no S3 root key and no MLflow admin
    wenv = dict(e.split("=", 1) for e in compose["container"]("prefect-worker")["Config"]["Env"])
    assert not [k for k in wenv if "DATABASE" in k or k.startswith(("PG", "MLFLOW_BACKEND", "MINIO"))]
    assert wenv["AWS_ACCESS_KEY_ID"] == s["WORKER_S3_ACCESS_KEY_ID"]
    assert s["MLFLOW_ADMIN_PASSWORD"] not in wenv.values()
    # the S3 users are scoped like MinIO's (docker/minio/*.json): the worker's key reaches the DVC
    # bucket only, and nothing unsigned is served
    import boto3
    from botocore.exceptions import ClientError

    worker = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9000",
        aws_access_key_id=s["WORKER_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=s["WORKER_S3_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    worker.list_objects_v2(Bucket="textclf-dvc")  # its own bucket (the flow run below pushes to it)
    with pytest.raises(ClientError) as denied:
        worker.list_objects_v2(Bucket="textclf-mlflow")
    assert (
        got(
            "s3 worker key lists the MLflow bucket",
            denied.value.response["ResponseMetadata"]["HTTPStatusCode"],
        )
        == 403
    )
    assert (
        got("s3 anonymous list", httpx.get("http://127.0.0.1:9000/textclf-mlflow", timeout=30).status_code)
        == 403
    )
    # compose refuses to start while a secret is unset
    partial = Path(compose["origin"]).parent / "partial.env"
    partial.write_text("".join(f"{k}={v}\n" for k, v in s.items() if k != "MLFLOW_ADMIN_PASSWORD"))
    refused = subprocess.run(
        [*_compose(partial), "config"],
        cwd=compose["repo_root"],
        env=compose["env"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "MLFLOW_ADMIN_PASSWORD" in refused.stderr, refused.stderr
    print("compose tier: refusals", json.dumps(refusals))


def test_a_flow_run_completes_on_the_compose_worker(compose: dict) -> None:
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    s = compose["secrets"]
    marker = uuid.uuid4().hex
    # deploying clones the origin here too, as root: git's upload-pack trusts a repository owned by the
    # containers' uid only when the global config says so
    trust = Path(compose["origin"]).parent / "gitconfig"
    trust.write_text(f"[safe]\n\tdirectory = {compose['origin']}\n")
    with (
        _timed("flow_run_s"),
        mock.patch.dict(os.environ, {"GIT_CONFIG_GLOBAL": str(trust)}),
        temporary_settings({PREFECT_API_URL: PREFECT, PREFECT_API_AUTH_STRING: s["PREFECT_AUTH_STRING"]}),
    ):
        flow = Flow.from_source(f"file://{compose['origin']}", entrypoint="flow.py:compose_worker_check")
        flow.deploy(  # type: ignore[attr-defined]
            name="compose-check",
            work_pool_name="textclf",
            build=False,
            push=False,
            parameters={"marker": marker},
        )
        fr = run_deployment("compose-worker-check/compose-check", timeout=0)
        with get_client(sync_client=True) as client:

            def final() -> str | None:
                state = client.read_flow_run(fr.id).state
                return state.type.value if state and state.is_final() else None

            state = wait_for(final, 300, "the flow run on the compose worker")
    worker_log = compose["dc"]("logs", "prefect-worker").stdout
    assert state == "COMPLETED", worker_log[-4000:]
    assert str(fr.id) in worker_log  # this worker ran it
    assert _status(f"{PREFECT}/flow_runs/{fr.id}") == 401  # and anonymous cannot read it

    # what the run left: an MLflow run (the worker's trainer account) with its artifact in S3
    reader = ("reader", s["MLFLOW_READER_PASSWORD"])
    exp = httpx.get(
        f"{MLFLOW}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "textclf"}, auth=reader
    ).json()["experiment"]
    runs = httpx.post(
        f"{MLFLOW}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [exp["experiment_id"]], "filter": f"params.marker = '{marker}'"},
        auth=reader,
    ).json()["runs"]
    assert len(runs) == 1, runs
    run_id = runs[0]["info"]["run_id"]
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=S3,
        aws_access_key_id=s["MINIO_ROOT_USER"],
        aws_secret_access_key=s["MINIO_ROOT_PASSWORD"],
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="textclf-mlflow").get("Contents", [])]
    assert [k for k in keys if run_id in k and k.endswith("marker.txt")], keys

"""The multi-machine path end to end on the local stack (`textclf stack up`): real PostgreSQL, moto's
S3 server over HTTP, `mlflow server`, `prefect server` and a process worker.

A bare git repo plays "origin". Clone A pushes the code there and its data to the DVC remote (S3). The
training deployment runs on the worker, which clones origin into its own empty directory, pulls the
data, and trains; the worker is killed mid-training and restarted, and the run still finishes. Then
the stores are checked directly (MLflow's API, boto3, psql), a fresh clone C with no caches packages
and serves the champion, and two gates in two clones race for one promotion. Step times are printed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import psutil
import pytest

from projects import TINY, env, make_project, run, section, toy_corpus, wait_for

# The stack supervisor is a tool beside the flows (flows/stack.py), not a module of the library.
_spec = importlib.util.spec_from_file_location(
    "textclf_stack", Path(__file__).resolve().parents[1] / "flows" / "stack.py"
)
assert _spec is not None and _spec.loader is not None
S = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(S)

BIN = Path(sys.executable).parent
TIMES: dict[str, float] = {}


class _Timer:
    def __init__(self, step: str) -> None:
        self.step = step

    def __enter__(self) -> None:
        self.t0 = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        TIMES[self.step] = round(time.monotonic() - self.t0, 1)
        print(f"stack test: {self.step}: {TIMES[self.step]} s", flush=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    s = S.Stack(tmp_path_factory.mktemp("stack-home"), section("mlflow"))
    try:
        with _Timer("stack up"):
            s.up()
        pss = {  # proportional set size: shared pages (PostgreSQL's buffers) counted once
            name: sum(
                p.memory_full_info().pss
                for p in [psutil.Process(e["pid"]), *psutil.Process(e["pid"]).children(True)]
            )
            for name, e in s.pids.items()
        }
        print("stack test: memory (PSS, MB):", {k: v >> 20 for k, v in pss.items()})
        # this process's own MLflow/Prefect clients: the trainer's account and the API auth string
        mp = pytest.MonkeyPatch()
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"):
            mp.setenv(key, s.client_env()[key])
        yield s
        mp.undo()
    finally:
        s.down(purge=True)


def _env(stack: object, **extra: str) -> dict[str, str]:
    return {**env(), **stack.client_env(), "PREFECT_HOME": str(Path(stack.dir) / "client"), **extra}  # type: ignore[attr-defined]


def _cli(stack: object, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=_env(stack), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def _kill_tree(pid: int) -> int:
    """SIGKILL a process and everything under it: the machine a worker ran on dies."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_compose_matches_the_stack_command(repo_root: Path, tmp_path: Path) -> None:
    """compose.yaml runs the same services, and its containers read the same variables, as `textclf
    stack` (moto stands in for minio locally; the servers' settings are the variables their CLIs read)."""
    import yaml

    compose = yaml.safe_load((repo_root / "compose.yaml").read_text())["services"]
    local = {"s3": "minio"}
    assert {local.get(s, s) for s in S.SERVICES} <= set(compose)
    stack = S.Stack(tmp_path, section("mlflow"))  # never started: only its variable names are compared
    names = set(stack.client_env()) | set(stack.server_env())
    in_compose = {k for svc in compose.values() for k in (svc.get("environment") or {})}
    assert names <= in_compose, names - in_compose
    worker = compose["prefect-worker"]["environment"]
    assert set(stack.client_env()) <= set(worker), "the worker is a client of every other service"
    assert set(stack.worker_env()) - set(worker) <= {
        "PATH",
        "HOME",
        "TMPDIR",
        "PREFECT_HOME",
        "PYTHONPATH",
    } | set(S.TELEMETRY_OFF) | set(S.WORKER_PASSTHROUGH)
    assert "--pool textclf" in compose["prefect-worker"]["command"]


@pytest.mark.stack
@pytest.mark.integration
def test_training_on_a_worker_of_the_real_stack(stack, tmp_path: Path, repo_root: Path) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client

    s, senv = stack, stack.client_env()
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)

    # 1. clone A: code to origin, data to the DVC remote
    with _Timer("clone A: git push + dvc push"):
        a = make_project(tmp_path / "a", repo_root, toy_corpus(), TINY)
        run(["git", "branch", "-M", "main"], a)
        run([str(BIN / "dvc"), "remote", "add", "-d", "stack", "s3://textclf-dvc/store"], a)
        run([str(BIN / "dvc"), "remote", "modify", "stack", "verify", "true"], a)  # pulls check md5s
        run(["git", "commit", "-qam", "DVC remote on the team's S3"], a)
        run(["git", "remote", "add", "origin", str(origin)], a)
        run(["git", "push", "-q", "origin", "main"], a)
        _cli(s, a, str(BIN / "dvc"), "push", "-q")

    # 2. the deployment runs on the worker, which is killed mid-training and restarted
    with _Timer("deploy to the work pool"):
        records = tmp_path / "records"  # the service's records folder, shared with the workers
        _cli(
            s,
            a,
            str(BIN / "python"),
            "flows/deploy.py",
            "--pool",
            "textclf",
            "--lost-after",
            "60",
            "--monitoring-dir",
            str(records),
        )
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with (
        _Timer("flow run on the worker, killed in training, restarted, finished"),
        temporary_settings(
            {
                PREFECT_API_URL: senv["PREFECT_API_URL"],
                PREFECT_API_AUTH_STRING: senv["PREFECT_API_AUTH_STRING"],
            }
        ),
    ):
        fr = run_deployment("training_pipeline/nightly", timeout=0)
        with get_client(sync_client=True) as client:
            wait_for(
                lambda: _task_state(client, fr.id, "train") == "RUNNING", 600, "train to start on the worker"
            )
            killed = _kill_tree(s.pids["prefect-worker"]["pid"])
            s.up()  # restarts the worker (and only the worker)
            final = wait_for(lambda: _final_state(client, fr.id), 900, "the flow run to finish")
            history = [st.name for st in client.read_flow_run_states(fr.id)]
            logs = "" if final == "COMPLETED" else _logs(client, fr.id)
        assert final == "COMPLETED", f"{history}\n{logs}"
        assert "AwaitingRetry" in history, history  # the automation put the lost run back in the queue
        print(f"stack test: killed {killed} processes; states {history}")

    # 3. what the servers hold
    c = MlflowClient(senv["MLFLOW_TRACKING_URI"])
    champion = c.get_model_version_by_alias("textclf-sentiment", "champion")
    run_ = c.get_run(champion.run_id)
    tags = run_.data.tags
    assert tags["textclf.prefect_flow_run_id"] == str(fr.id)
    assert tags["textclf.git_commit"] == run(["git", "rev-parse", "HEAD"], a).stdout.strip()
    assert run_.inputs.dataset_inputs, "the run logs its dataset inputs"

    s3 = _s3_as(s, "operator")  # the stores as they are: only the operator's key lists the MLflow bucket

    def keys(bucket: str) -> list[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    mlflow_keys = keys("textclf-mlflow")
    assert any(k.endswith("model.safetensors") for k in mlflow_keys), mlflow_keys[:20]
    pg = subprocess.run(
        [
            str(S.PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(s.ports["postgres"]),
            "-U",
            "textclf",
            "-d",
            "mlflow",
            "-tAc",
            "select version from registered_model_aliases where alias='champion'",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PGPASSWORD": s.secret("pg-superuser")},
    )
    assert pg.stdout.strip() == str(champion.version)
    dvc_keys = set(keys("textclf-dvc"))

    def in_remote(md5: str) -> bool:
        return f"store/files/md5/{md5[:2]}/{md5[2:]}" in dvc_keys

    assert in_remote(tags["textclf.data_dvc_md5"]), "raw data (data.dvc) in the DVC remote"
    assert in_remote(tags["textclf.dvc_lock.prepare"]), "the worker pushed the prepared splits"
    with tempfile.TemporaryDirectory() as tmp:
        from textclf.tracking.pyfunc import download_model_dir

        model_dir = download_model_dir(c, str(champion.source), Path(tmp))
        weights = _md5(model_dir / "model.safetensors")
    assert in_remote(weights), "the worker pushed the model output (same bytes as the registered model)"

    # 4. a fresh clone with no caches and no mlflow/ packages and serves the champion
    with _Timer("clone C: package + serve + classify"):
        cc = tmp_path / "c"
        run(["git", "clone", "-q", str(origin), str(cc)], tmp_path)
        assert not (cc / "mlflow" / "mlflow.db").exists()
        _cli(s, cc, str(BIN / "textclf"), "package")
        _serve_and_classify(s, cc, champion)

    # 5. two gates in two clones, held at a barrier: exactly one promotes
    with _Timer("two gates race"):
        _two_gates(s, a, cc, tmp_path, champion)

    # 6. who does not belong: every plane refuses, and nothing changed
    with _Timer("refusals"):
        _refusals(s, cc, fr.id)

    # 6b. the S3 plane: no key, a random key, the admin routes, and our keys beyond their scope
    with _Timer("S3 refusals"):
        _s3_refusals(s, s3, champion)

    # 7. the monitor deployment on the pool finds drift and starts a training that completes in the
    # worker's own clone (its flow run gets no project_dir of the monitor's)
    with _Timer("monitor on the pool: drift starts a training on the worker"):
        _drift_starts_training_on_the_pool(s, records)

    # 8. the champion's weights changed in the MLflow bucket after the gate: packaging refuses them
    with _Timer("tampered model refused"):
        _tampered_champion_refused(s, cc, s3)
    print("stack test: refusals (plane, caller, operation -> status)", json.dumps(REFUSALS, indent=1))
    print("stack test times:", json.dumps(TIMES))


def _drift_starts_training_on_the_pool(stack, records: Path) -> None:  # noqa: ANN001
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from textclf.contracts import now
    from textclf.data.records import FEEDBACK, TRAFFIC, PartWriter

    feedback = {"id": "fb-1", "ts": now(), "text": "快递很慢", "label": "neg", "submitter": "qa"}
    PartWriter(records, FEEDBACK, rotate_bytes=2**20).write([feedback], fsync=True)
    writer = PartWriter(records, TRAFFIC, rotate_bytes=2**20)
    shifted = "物流配送包装快递员态度" * 8  # long texts from another domain, all one label, unsure
    writer.write(
        [
            {
                "ts": now(),
                "model": "textclf-model:x",
                "text": f"{shifted}{i}",
                "length": len(shifted) + 1,
                "label": "neg",
                "confidence": 0.51,
                "truncated": True,
            }
            for i in range(80)
        ]
    )
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    senv = stack.client_env()
    with (
        temporary_settings(
            {
                PREFECT_API_URL: senv["PREFECT_API_URL"],
                PREFECT_API_AUTH_STRING: senv["PREFECT_API_AUTH_STRING"],
            }
        ),
        get_client(sync_client=True) as client,
    ):
        mon = run_deployment("monitor/monitor", timeout=0)
        assert wait_for(lambda: _final_state(client, mon.id), 600, "the monitor run") == "COMPLETED", _logs(
            client, mon.id
        )
        started = [
            r for r in client.read_flow_runs() if str(r.parameters.get("reason", "")).startswith("drift:")
        ]
        assert len(started) == 1, [r.parameters for r in client.read_flow_runs()]
        training = started[0]
        assert "project_dir" not in training.parameters, training.parameters
        assert training.parameters["import_feedback"] is True
        final = wait_for(lambda: _final_state(client, training.id), 900, "the drift-triggered training")
        assert final == "COMPLETED", _logs(client, training.id)
        print(f"stack test: drift-triggered run {training.name}: {final}, {training.parameters['reason']}")


def _task_state(client, flow_run_id, name: str) -> str | None:  # noqa: ANN001
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states = [t.state.type.value for t in runs if t.name.startswith(name) and t.state]
    return states[-1] if states else None


def _final_state(client, flow_run_id) -> str | None:  # noqa: ANN001
    state = client.read_flow_run(flow_run_id).state
    return state.type.value if state and state.is_final() else None


TEXTS = ["质量很好，第3次购买，非常满意", "太差了，第7次买到坏的，很失望"]


def _serve_and_classify(stack, proj: Path, champion) -> None:  # noqa: ANN001
    """`textclf serve` in the fresh clone: the champion's Bento answers like the champion offline."""
    from textclf.model.predictor import Predictor
    from textclf.serving.package import free_port
    from textclf.serving.release import served_model_dir

    port = free_port()
    log = proj / "serve.log"
    proc = subprocess.Popen(
        [str(BIN / "textclf"), "serve", "--port", str(port)],
        cwd=proj,
        env=_env(stack),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base) or (proc.poll() is not None and _fail(log)), 180, "bentoml serve")
        served = httpx.post(f"{base}/classify", json={"texts": TEXTS}, timeout=60)
        assert served.status_code == 200, served.text
        from mlflow.tracking import MlflowClient

        c = MlflowClient(stack.client_env()["MLFLOW_TRACKING_URI"])
        offline = Predictor(  # on the runtime serve.runtime picks (its ONNX file comes from S3 too)
            served_model_dir(c, "textclf-sentiment", champion.version, "auto", proj / ".offline")
        )
        assert [p["label"] for p in served.json()] == [p.label for p in offline.predict(TEXTS)]
        meta = httpx.get(f"{base}/metadata", timeout=30).json()
        assert meta["lineage"]["registered_version"] == str(champion.version)
        assert meta["runtime"] == offline.runtime
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _fail(log: Path) -> bool:
    raise AssertionError(f"textclf serve exited:\n{log.read_text()[-3000:]}")


_GATE = r"""
import json, sys, time
from pathlib import Path
from textclf.config import config_from_dict, load_config
from textclf.gate import promotion as gate_run
from textclf.tracking.registry import PromotionConflict

root, version, barrier = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
params = load_config(root / "params.yaml").model_dump(mode="json")
params["gate"]["infra_validation"]["enabled"] = False  # judged and served above; this is about the lock
cfg = config_from_dict(params)
decide = gate_run.decide

def decide_then_wait(*args):  # test-side fault injection: both processes decide, then race
    decision = decide(*args)
    (barrier / f"ready-{version}").touch()
    deadline = time.time() + 300
    while len(list(barrier.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return decision

gate_run.decide = decide_then_wait
try:
    out = gate_run.run_gate(cfg, root, version=version)
    print(json.dumps({"version": version, "decided": out.decision.promote, "promoted": out.promoted}))
except PromotionConflict as err:
    print(json.dumps({"version": version, "decided": True, "promoted": False, "conflict": str(err)}))
"""


def _two_gates(stack, a: Path, cc: Path, tmp: Path, champion) -> None:  # noqa: ANN001
    """Two candidates (copies of the champion's model, so both pass) gated from two clones at once;
    the registry lock is the Prefect server's global concurrency limit."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(stack.client_env()["MLFLOW_TRACKING_URI"])
    name = champion.name
    gate = {"MLFLOW_TRACKING_USERNAME": "gate", "MLFLOW_TRACKING_PASSWORD": stack.secret("mlflow-gate")}
    with mock.patch.dict(os.environ, gate):  # registering is the gate's: the trainer only reads the registry
        versions = [
            str(
                c.create_model_version(
                    name, champion.source, champion.run_id, model_id=champion.source.removeprefix("models:/")
                ).version
            )
            for _ in range(2)
        ]
    barrier = tmp / "barrier"
    barrier.mkdir()
    for proj in (a, cc):  # the gate judges on the current test split: prepare is deterministic
        _cli(stack, proj, str(BIN / "dvc"), "pull", "--allow-missing")  # C is fresh: data from S3
        _cli(stack, proj, str(BIN / "dvc"), "repro", "validate_prepared")
    procs = [
        subprocess.Popen(
            [str(BIN / "python"), "-c", _GATE, str(proj), v, str(barrier)],
            cwd=proj,
            env=_env(stack),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for proj, v in zip((a, cc), versions, strict=True)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["decided"] for r in results), results
    winners = [r["version"] for r in results if r["promoted"]]
    assert len(winners) == 1, results
    assert c.get_model_version_by_alias(name, "champion").version == winners[0]


REFUSALS: dict[str, int] = {}


def _refusals(stack, cc: Path, flow_run_id) -> None:  # noqa: ANN001
    from mlflow.tracking import MlflowClient

    env = stack.client_env()
    mlflow, api = env["MLFLOW_TRACKING_URI"], env["PREFECT_API_URL"]
    model = "textclf-sentiment"
    c = MlflowClient(mlflow)
    before = {a: c.get_model_version_by_alias(model, a).version for a in ("champion", "previous-champion")}

    def got(what: str, status: int) -> int:
        REFUSALS[what] = status
        return status

    # every listener of every service (and its children) is on loopback
    for name, entry in stack.pids.items():
        proc = psutil.Process(entry["pid"])
        for p in [proc, *proc.children(recursive=True)]:
            for conn in p.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    assert conn.laddr.ip == "127.0.0.1", (name, p.cmdline()[:3], conn.laddr)

    # MLflow: anonymous 401; reader 403 on alias moves and deletes; trainer 403 on deleting an alias
    search = f"{mlflow}/api/2.0/mlflow/registered-models/search"
    alias = f"{mlflow}/api/2.0/mlflow/registered-models/alias"
    reader = ("reader", stack.secret("mlflow-reader"))
    trainer = ("trainer", stack.secret("mlflow-trainer"))
    other = before["previous-champion"]
    assert got("mlflow anonymous search", httpx.get(search, timeout=30).status_code) == 401
    art = f"{mlflow}/api/2.0/mlflow-artifacts/artifacts"
    assert got("mlflow anonymous artifact list", httpx.get(art, timeout=30).status_code) == 401
    put = httpx.put(f"{art}/1/intruder.txt", content=b"x", timeout=30)
    assert got("mlflow anonymous artifact write", put.status_code) == 401
    assert got("mlflow reader search", httpx.get(search, auth=reader, timeout=30).status_code) == 200
    move = {"name": model, "alias": "champion", "version": other}
    assert (
        got("mlflow reader set @champion", httpx.post(alias, json=move, auth=reader, timeout=30).status_code)
        == 403
    )
    delete_v = httpx.request(
        "DELETE", f"{mlflow}/api/2.0/mlflow/model-versions/delete", json={"name": model, "version": other},
        auth=reader, timeout=30,
    )  # fmt: skip
    assert got("mlflow reader delete version", delete_v.status_code) == 403
    drop_c = httpx.request(
        "DELETE", alias, json={"name": model, "alias": "challenger"}, auth=reader, timeout=30
    )
    assert got("mlflow reader delete @challenger", drop_c.status_code) == 403
    drop = httpx.request(
        "DELETE", alias, json={"name": model, "alias": "previous-champion"}, auth=trainer, timeout=30
    )
    assert got("mlflow trainer delete alias", drop.status_code) == 403
    # the trainer holds READ on the registered model: it cannot move @champion either
    moved = httpx.post(alias, json=move, auth=trainer, timeout=30)
    assert got("mlflow trainer set @champion", moved.status_code) == 403
    after = {a: c.get_model_version_by_alias(model, a).version for a in before}
    assert after == before, (before, after)
    # `textclf promote --force` as the reader: refused, nothing moved
    renv = {k: v for k, v in _env(stack).items() if not k.startswith("TEXTCLF_GATE_")}
    renv.update(MLFLOW_TRACKING_USERNAME="reader", MLFLOW_TRACKING_PASSWORD=reader[1])
    forced = subprocess.run(
        [str(BIN / "textclf"), "promote", other, "--force", "--reason", "intruder"],
        cwd=cc, env=renv, capture_output=True, text=True,
    )  # fmt: skip
    REFUSALS["textclf promote --force as reader (exit)"] = forced.returncode
    assert forced.returncode != 0 and "permission" in (forced.stdout + forced.stderr).lower(), forced.stdout[
        -2000:
    ]
    assert {a: c.get_model_version_by_alias(model, a).version for a in before} == before
    # the same command as the reader but with the gate's account named: promote and roll back work
    # (the gate switches to it; the reader's own account would get 403)
    genv = {
        **renv,
        "TEXTCLF_GATE_MLFLOW_USERNAME": "gate",
        "TEXTCLF_GATE_MLFLOW_PASSWORD": stack.secret("mlflow-gate"),
    }
    for args in (
        ["promote", other, "--force", "--reason", "gate drill"],
        ["rollback", "--reason", "drill over"],
    ):
        done = subprocess.run([str(BIN / "textclf"), *args], cwd=cc, env=genv, capture_output=True, text=True)
        REFUSALS[f"textclf {args[0]} as gate (exit)"] = done.returncode
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        if args[0] == "promote":
            assert c.get_model_version_by_alias(model, "champion").version == other
    assert {a: c.get_model_version_by_alias(model, a).version for a in before} == before

    # Prefect: anonymous refused, health open, no CORS for a foreign origin
    assert got("prefect anonymous health", httpx.get(f"{api}/health", timeout=30).status_code) == 200
    assert (
        got(
            "prefect anonymous GET flow run",
            httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=30).status_code,
        )
        == 401
    )
    token = httpx.get(f"{api}/csrf-token", params={"client": "intruder"}, timeout=30).status_code
    assert got("prefect anonymous GET csrf-token", token) == 401  # so no anonymous POST gets a token
    filt = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).status_code
    assert got("prefect anonymous deployment filter", filt) in (401, 403)  # 403: CSRF answers first
    preflight = httpx.options(
        f"{api}/deployments/filter",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    REFUSALS["prefect foreign preflight"] = preflight.status_code
    assert "access-control-allow-origin" not in preflight.headers, dict(preflight.headers)

    # PostgreSQL: no password, no session (TCP and the unix socket)
    for host in ("127.0.0.1", str((stack.dir / "postgres").resolve())):
        nopw = subprocess.run(
            [str(S.PG_BIN / "psql"), "-w", "-h", host, "-p", str(stack.ports["postgres"]), "-U", "textclf",
             "-d", "postgres", "-c", "select 1"],
            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        REFUSALS[f"psql without password via {'tcp' if host[0] == '1' else 'socket'} (exit)"] = (
            nopw.returncode
        )
        assert nopw.returncode != 0 and "password" in nopw.stderr, nopw.stderr

    # the worker's environment: no database URL, no S3 key but its own; no secret in any log
    wenv = psutil.Process(stack.pids["prefect-worker"]["pid"]).environ()
    assert not [k for k in wenv if "DATABASE" in k or k.startswith(("PG", "MLFLOW_BACKEND"))], sorted(wenv)
    assert wenv["AWS_ACCESS_KEY_ID"] == S.S3_KEYS["worker"]
    secrets = [
        f.read_text().strip() for f in (stack.dir / "secrets").iterdir() if not f.name.startswith("pgpass")
    ]
    for log in stack.dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert not [x for x in secrets if x in text], f"a secret in {log.name}"
    assert stat.S_IMODE((stack.dir / "env").stat().st_mode) == 0o600


def _s3_as(stack, holder: str | None, secret: str | None = None):  # noqa: ANN001, ANN202 - boto3 client
    """A boto3 S3 client of the stack's ``holder`` key (None: a stranger's random key)."""
    import boto3
    from botocore.config import Config

    key_id = S.S3_KEYS[holder] if holder else "AKIA" + secrets.token_hex(8).upper()
    return boto3.client(
        "s3",
        endpoint_url=stack.client_env()["AWS_ENDPOINT_URL"],
        aws_access_key_id=key_id,
        aws_secret_access_key=secret or (stack.secret(f"s3-{holder}") if holder else secrets.token_hex(20)),
        region_name=S.REGION,
        config=Config(retries={"max_attempts": 1}),
    )


def _s3_refusals(stack, s3, champion) -> None:  # noqa: ANN001
    """Every S3 request is checked: anonymous and random-key list/get/put/delete 403, moto's admin routes
    403, the worker's key 403 on the champion's objects, nobody but the operator deletes a version or
    changes a bucket. The champion's weights are unchanged at the end (one version, same bytes)."""
    from botocore.exceptions import ClientError

    model_id = champion.source.removeprefix("models:/")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="textclf-mlflow")
    weights = next(
        o["Key"]
        for p in pages
        for o in p.get("Contents", [])
        if model_id in o["Key"] and o["Key"].endswith(".safetensors")
    )
    versions = s3.list_object_versions(Bucket="textclf-mlflow", Prefix=weights)["Versions"]
    body, version = (
        s3.get_object(Bucket="textclf-mlflow", Key=weights)["Body"].read(),
        versions[0]["VersionId"],
    )
    url = stack.client_env()["AWS_ENDPOINT_URL"]

    def refused(what: str, call) -> None:  # noqa: ANN001
        try:
            call()
        except ClientError as err:
            status = err.response["ResponseMetadata"]["HTTPStatusCode"]
        else:
            status = 200
        REFUSALS[f"s3 {what}"] = status
        assert status == 403, what

    for m, path in (
        ("GET", "/"),
        ("GET", "/textclf-mlflow"),
        ("GET", f"/textclf-mlflow/{weights}"),
        ("PUT", f"/textclf-mlflow/{weights}"),
        ("DELETE", f"/textclf-mlflow/{weights}"),
        ("POST", "/moto-api/reset"),
        ("POST", "/moto-api/reset-auth"),
        ("GET", "/moto-api/data.json"),
    ):
        status = httpx.request(
            m, url + path, content=b"evil" if m in ("PUT", "POST") else None, timeout=30
        ).status_code
        REFUSALS[f"s3 no key {m} {path.replace(weights, '<champion weights>')}"] = status
        assert status == 403, (m, path, status)
    stranger = _s3_as(stack, None)
    refused("random key list buckets", stranger.list_buckets)
    refused("random key list", lambda: stranger.list_objects_v2(Bucket="textclf-mlflow"))
    refused("random key get weights", lambda: stranger.get_object(Bucket="textclf-mlflow", Key=weights))
    refused(
        "random key put weights", lambda: stranger.put_object(Bucket="textclf-mlflow", Key=weights, Body=b"x")
    )
    refused("random key delete weights", lambda: stranger.delete_object(Bucket="textclf-mlflow", Key=weights))
    wrong = _s3_as(stack, "worker", secret="not-the-workers-secret")
    refused("worker key, wrong secret, list", lambda: wrong.list_objects_v2(Bucket="textclf-dvc"))
    worker = _s3_as(stack, "worker")
    refused("worker list MLflow bucket", lambda: worker.list_objects_v2(Bucket="textclf-mlflow"))
    refused("worker get weights", lambda: worker.get_object(Bucket="textclf-mlflow", Key=weights))
    refused("worker put weights", lambda: worker.put_object(Bucket="textclf-mlflow", Key=weights, Body=b"x"))
    refused("worker delete weights", lambda: worker.delete_object(Bucket="textclf-mlflow", Key=weights))
    refused(
        "worker suspend versioning (DVC bucket)",
        lambda: worker.put_bucket_versioning(
            Bucket="textclf-dvc", VersioningConfiguration={"Status": "Suspended"}
        ),
    )
    dvc_key = next(o["Key"] for o in worker.list_objects_v2(Bucket="textclf-dvc")["Contents"])
    dvc_version = s3.list_object_versions(Bucket="textclf-dvc", Prefix=dvc_key)["Versions"][0]["VersionId"]
    refused(
        "worker delete an object version (DVC bucket)",
        lambda: worker.delete_object(Bucket="textclf-dvc", Key=dvc_key, VersionId=dvc_version),
    )
    server = _s3_as(stack, "mlflow")
    refused(
        "MLflow server key delete the weights' version",
        lambda: server.delete_object(Bucket="textclf-mlflow", Key=weights, VersionId=version),
    )
    refused("MLflow server key list DVC bucket", lambda: server.list_objects_v2(Bucket="textclf-dvc"))
    assert s3.list_object_versions(Bucket="textclf-mlflow", Prefix=weights)["Versions"] == versions
    assert s3.get_object(Bucket="textclf-mlflow", Key=weights)["Body"].read() == body
    assert s3.get_bucket_versioning(Bucket="textclf-dvc")["Status"] == "Enabled"


def _tampered_champion_refused(stack, cc: Path, s3) -> None:  # noqa: ANN001
    """The trainer rewrites the champion's weights through MLflow's artifact proxy (its EDIT on the
    experiment allows that: MLflow cannot refuse it). `textclf package` then refuses, naming the file."""
    from mlflow.tracking import MlflowClient

    env = stack.client_env()
    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    champion = c.get_model_version_by_alias("textclf-sentiment", "champion")
    sealed = json.loads(champion.tags["textclf.files_sha256"])
    assert "model/model.safetensors" in sealed, sorted(sealed)
    model_id = champion.source.removeprefix("models:/")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="textclf-mlflow")
    keys = [o["Key"] for p in pages for o in p.get("Contents", []) if model_id in o["Key"]]
    weights = next(k for k in keys if k.endswith("model.safetensors"))
    body = s3.get_object(Bucket="textclf-mlflow", Key=weights)["Body"].read()
    location = c.get_logged_model(model_id).artifact_location.removeprefix("mlflow-artifacts:/").strip("/")
    inside = weights.split(f"{model_id}/artifacts/", 1)[1]
    url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow-artifacts/artifacts/{location}/{inside}"
    trainer = ("trainer", stack.secret("mlflow-trainer"))
    put = httpx.put(url, content=body[:-4] + b"evil", auth=trainer, timeout=60)
    REFUSALS["mlflow trainer PUT on the champion's weights (MLflow allows it)"] = put.status_code
    assert put.status_code == 200, put.text[:500]
    versions = s3.list_object_versions(Bucket="textclf-mlflow", Prefix=weights)["Versions"]
    assert len(versions) == 2, "the bucket is versioned: the gated bytes are still there"
    out = _cli(stack, cc, str(BIN / "textclf"), "package", check=False)
    assert out.returncode != 0, out.stdout[-2000:]
    said = out.stdout + out.stderr
    assert "changed ['model/model.safetensors']" in said, said[-3000:]
    REFUSALS["textclf package after the trainer's PUT (exit)"] = out.returncode


def _logs(client, flow_run_id) -> str:  # noqa: ANN001
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    logs = client.read_logs(
        LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=60, sort=LogSort.TIMESTAMP_DESC
    )
    return "\n".join(f"{log.timestamp:%H:%M:%S} {log.message[:2000]}" for log in reversed(logs))


def _logins(stack) -> dict[str, bool]:  # noqa: ANN001
    """Which passwords each account's server accepts: the one on file, and a wrong one."""
    url = f"{stack.client_env()['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/get-by-name"
    out = {}
    for account in S.ACCOUNTS:
        for which, password in (("file", stack.secret(f"mlflow-{account}")), ("wrong", "not-the-password")):
            r = httpx.get(
                url, params={"experiment_name": stack.experiment}, auth=(account, password), timeout=30
            )
            out[f"mlflow {account} {which}"] = r.status_code == 200
    for role in ("mlflow", "prefect"):
        for which, password in (("file", stack.secret(f"pg-{role}")), ("wrong", "not-the-password")):
            psql = [str(S.PG_BIN / "psql"), "-w", "-h", "127.0.0.1", "-p", str(stack.ports["postgres"])]
            done = subprocess.run(
                [*psql, "-U", role, "-d", role, "-tA"], input="select 1", capture_output=True, text=True,
                env={"PATH": "/usr/bin:/bin", "PGPASSWORD": password},
            )  # fmt: skip
            out[f"postgres {role} {which}"] = done.returncode == 0
    return out


@pytest.mark.stack
@pytest.mark.integration
def test_up_again_after_down_and_after_a_rotation_keeps_secrets_off_command_lines(stack) -> None:  # noqa: ANN001
    """up on a running stack → down → up → delete two password files (rotation) → up: every `up`
    succeeds, every account then logs in with the password on file and with no other, and no generated
    secret ever shows in a process's command line (`ps -eo args`, polled throughout)."""
    import threading

    seen: set[str] = set()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.update(
                subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
            )

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    rotated = ("mlflow-trainer", "pg-prefect")
    old = {name: stack.secret(name) for name in rotated}
    try:
        with _Timer("up on a running stack"):
            stack.up()
        with _Timer("down, then up"):
            stack.down()
            stack.up()
        assert all(stack.running().values()), stack.running()
        for name in rotated:
            (stack.dir / "secrets" / name).unlink()
        with _Timer("up after a rotation"):
            stack.up()
    finally:
        done.set()
        poller.join()
    assert all(stack.secret(n) != old[n] for n in rotated)
    logins = _logins(stack)
    assert {k for k, ok in logins.items() if ok} == {k for k in logins if k.endswith(" file")}, logins
    psql = [str(S.PG_BIN / "psql"), "-w", "-h", "127.0.0.1", "-p", str(stack.ports["postgres"])]
    other_db = subprocess.run(
        [*psql, "-U", "mlflow", "-d", "postgres", "-tA"], input="select 1", capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": stack.secret("pg-mlflow")},
    )  # fmt: skip
    assert other_db.returncode != 0 and "permission denied" in other_db.stderr, (
        other_db.stderr
    )  # REVOKE CONNECT
    generated = [
        f.read_text().strip() for f in (stack.dir / "secrets").iterdir() if not f.name.startswith("pgpass")
    ]
    leaked = [line for line in seen for x in [*generated, *old.values()] if x in line]
    assert len(seen) > 20 and not leaked, leaked[:3]

"""The multi-machine stack as local processes, for trying and testing what a team deploys.

    textclf stack up       # start what is not running; prints the variables clients export
    textclf stack status
    textclf stack down     # stop everything by process group

Services (``compose.yaml`` runs the same ones with the same variable names):

- ``postgres``: a private PostgreSQL 15 cluster (``initdb``; never the system cluster), databases
  ``mlflow`` and ``prefect``;
- ``s3``: moto's standalone server as the S3 endpoint (buckets ``textclf-mlflow``, ``textclf-dvc``);
  swap in MinIO or AWS by changing ``AWS_ENDPOINT_URL`` and the credentials;
- ``mlflow``: ``mlflow server`` on PostgreSQL, artifacts proxied to S3 (clients know only its URL);
- ``prefect-server``: ``prefect server start`` on PostgreSQL;
- ``prefect-worker``: a worker of the process work pool ``textclf``, in its own empty directory.

State lives in ``.stack/`` (git-ignored): ``state.json`` (ports, pids), ``env`` (the exports), logs.
moto keeps S3 in memory: objects live as long as its process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from textclf.env import TELEMETRY_OFF
from textclf.errors import TextclfError
from textclf.serving.package import free_port

SERVICES = ("postgres", "s3", "mlflow", "prefect-server", "prefect-worker")
MLFLOW_BUCKET, DVC_BUCKET = "textclf-mlflow", "textclf-dvc"
POOL = "textclf"
# Debian's layout; the newest installed major version unless TEXTCLF_PG_BIN names the folder
PG_BIN = Path(
    os.environ.get("TEXTCLF_PG_BIN")
    or max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), default="/usr/bin")
)
CREDENTIALS = {  # moto accepts any; replace with real ones for MinIO/AWS
    "AWS_ACCESS_KEY_ID": "textclf",
    "AWS_SECRET_ACCESS_KEY": "textclf-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class StackError(TextclfError):
    """A stack service did not start."""


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of this process counts as dead
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


class Stack:
    def __init__(self, root: Path) -> None:
        self.dir = root.resolve() / ".stack"
        self.state_file = self.dir / "state.json"
        state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        if not (ports := state.get("ports")):
            ports = {s: free_port() for s in SERVICES[:4]}
        self.ports: dict[str, int] = ports
        self.pids: dict[str, int] = state.get("pids", {})

    # ------------------------------------------------------------------ variables
    def client_env(self) -> dict[str, str]:
        """What a client (a clone, the worker, a CI job) exports to use the stack."""
        p = self.ports
        return {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{p['mlflow']}",
            "PREFECT_API_URL": f"http://127.0.0.1:{p['prefect-server']}/api",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{p['s3']}",  # boto3 and DVC's s3 remote read it
            **CREDENTIALS,
        }

    def server_env(self) -> dict[str, str]:
        """The servers' own settings (the variables their CLIs read)."""
        pg = f"textclf@127.0.0.1:{self.ports['postgres']}"
        return {
            "MLFLOW_BACKEND_STORE_URI": f"postgresql://{pg}/mlflow",
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{MLFLOW_BUCKET}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.ports['s3']}",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{pg}/prefect",
        }

    # ------------------------------------------------------------------ processes
    def _env(self, **extra: str) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            **TELEMETRY_OFF,
            **self.client_env(),
            **self.server_env(),
            **extra,
        }

    def _start(
        self, name: str, cmd: list[str], ready: Callable[[], bool], timeout: float, **kw: object
    ) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.pids[name] = proc.pid
        self._save()
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"{name} did not start; see {self.dir / f'{name}.log'}")
            time.sleep(0.5)

    def _http_ok(self, url: str) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        return check

    def _save(self) -> None:
        self.state_file.write_text(json.dumps({"ports": self.ports, "pids": self.pids}, indent=1))
        exports = {**self.client_env()}
        (self.dir / "env").write_text("".join(f"export {k}={v}\n" for k, v in exports.items()))

    def running(self) -> dict[str, bool]:
        return {s: _alive(self.pids.get(s)) for s in SERVICES}

    def up(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        running = self.running()
        starters = {
            "postgres": self._postgres,
            "s3": self._s3,
            "mlflow": self._mlflow,
            "prefect-server": self._prefect_server,
            "prefect-worker": self._worker,
        }
        for name, start in starters.items():
            if not running[name]:
                start()

    def down(self, purge: bool = False) -> None:
        for name in reversed(SERVICES):
            pid = self.pids.pop(name, None)
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGTERM)  # type: ignore[arg-type]
                    for _ in range(100):
                        if not _alive(pid):
                            break
                        time.sleep(0.1)
                    else:
                        os.killpg(pid, signal.SIGKILL)  # type: ignore[arg-type]
                except ProcessLookupError:
                    pass
        if purge:  # the data too: PostgreSQL's folder (outside when run as root) and .stack/
            pg = self.dir / "postgres"
            if pg.is_symlink():
                shutil.rmtree(pg.resolve(), ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir.is_dir():
            self._save()

    # ------------------------------------------------------------------ services
    def _postgres(self) -> None:
        data, port = self.dir / "postgres", str(self.ports["postgres"])
        as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses root: run it as the postgres user, in a folder it owns
            as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"]
            if not data.exists():
                outside = Path(tempfile.mkdtemp(prefix="textclf-stack-pg-"))
                shutil.chown(outside, "postgres", "postgres")
                data.symlink_to(outside)
        data = data.resolve()  # the postgres user cannot traverse a root-only folder to a symlink
        if not (data / "PG_VERSION").is_file():
            initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "textclf", "--auth=trust", "-E", "UTF8"]
            done = subprocess.run([*as_user, *initdb], capture_output=True, text=True)
            if done.returncode != 0:
                raise StackError(f"initdb failed: {done.stderr.strip()}")
        server = [str(PG_BIN / "postgres"), "-D", str(data), "-p", port, "-h", "127.0.0.1", "-k", str(data)]
        ready = [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", port]
        self._start(
            "postgres",
            [*as_user, *server],
            lambda: subprocess.run(ready, capture_output=True).returncode == 0,
            60,
        )
        for db in ("mlflow", "prefect"):  # an error here means it exists (a restart)
            createdb = [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "textclf", db]
            subprocess.run(createdb, capture_output=True)

    def _s3(self) -> None:
        import boto3

        url = f"http://127.0.0.1:{self.ports['s3']}"
        cmd = [
            str(Path(sys.executable).parent / "moto_server"),
            "-H",
            "127.0.0.1",
            "-p",
            str(self.ports["s3"]),
        ]
        self._start("s3", cmd, self._http_ok(url), 60, env=self._env())
        s3 = boto3.client(
            "s3", endpoint_url=url, **{k.lower(): v for k, v in CREDENTIALS.items() if "KEY" in k}
        )
        for bucket in (MLFLOW_BUCKET, DVC_BUCKET):
            s3.create_bucket(Bucket=bucket)

    def _mlflow(self) -> None:
        port = str(self.ports["mlflow"])
        cmd = [
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--serve-artifacts",
            "--workers",
            "1",
        ]
        cmd += ["--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"]
        env = self._env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self._start("mlflow", cmd, self._http_ok(f"http://127.0.0.1:{port}/health"), 180, env=env)

    def _prefect_server(self) -> None:
        port = str(self.ports["prefect-server"])
        api = f"http://127.0.0.1:{port}/api"
        env = self._env(PREFECT_HOME=str(self.dir / "prefect"), PREFECT_UI_API_URL=api)
        cmd = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", port]
        self._start("prefect-server", cmd, self._http_ok(f"{api}/health"), 180, env=env)

    def _worker(self) -> None:
        work = self.dir / "worker"  # its own empty directory: flow runs clone the code from git
        work.mkdir(exist_ok=True)
        env = self._env(PREFECT_HOME=str(work / ".prefect"), PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
        cmd = ["prefect", "worker", "start", "--pool", POOL, "--type", "process", "--name", "textclf-worker"]
        log = self.dir / "prefect-worker.log"
        start = log.stat().st_size if log.is_file() else 0
        self._start(
            "prefect-worker", cmd, lambda: b"started" in log.read_bytes()[start:], 120, env=env, cwd=work
        )

    def describe(self) -> str:
        lines = [f"{s:15} {'running' if up else 'stopped'}" for s, up in self.running().items()]
        p = self.ports
        lines += [
            "",
            f"MLflow UI   http://127.0.0.1:{p['mlflow']}",
            f"Prefect UI  http://127.0.0.1:{p['prefect-server']}",
            f"S3          http://127.0.0.1:{p['s3']}  (buckets {MLFLOW_BUCKET}, {DVC_BUCKET})",
            f"PostgreSQL  postgresql://textclf@127.0.0.1:{p['postgres']}  (databases mlflow, prefect)",
            "",
            f"# source {self.dir / 'env'}   (or export these)",
            *(f"export {k}={v}" for k, v in self.client_env().items()),
        ]
        return "\n".join(lines)

"""The multi-machine stack as local processes, for trying and testing what a team deploys.

    textclf stack up       # start what is not running; prints the variables clients export
    textclf stack status
    textclf stack down     # stop everything by process group

Services (``compose.yaml`` runs the same ones with the same variable names):

- ``postgres``: a private PostgreSQL 15 cluster (``initdb --auth=scram-sha-256``; never the system
  cluster); roles and databases ``mlflow`` (+ ``mlflow_auth``) and ``prefect``, none of them superuser;
- ``s3``: ``flows/s3_plane.py``, moto's S3 with IAM enforced on every request (buckets ``textclf-mlflow``,
  ``textclf-dvc``, both versioned; one key and policy per holder, :data:`S3_POLICIES`); swap in MinIO or
  AWS by changing ``AWS_ENDPOINT_URL`` and the credentials;
- ``mlflow``: ``mlflow server --app-name basic-auth`` on PostgreSQL, artifacts proxied to S3; accounts
  ``gate``, ``trainer`` and ``reader`` (docs/security.md);
- ``prefect-server``: ``prefect server start`` on PostgreSQL with an API auth string, CORS limited to
  its UI's origin and CSRF protection on;
- ``prefect-worker``: a worker of the process work pool ``textclf``, in its own empty directory, with a
  short explicit environment (:meth:`Stack.worker_env`).

State lives in ``.stack/`` (git-ignored, mode 0700): ``state.json`` (ports; pids with their start
times), ``env`` (the exports, 0600), ``secrets/`` (generated, one 0600 file each), logs.
moto keeps S3 in memory: objects live as long as its process (and S3 keys are read when it starts).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import httpx
import psutil

from textclf.config import MlflowConfig, load_config
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
PG_SUPERUSER = "textclf"
REGION = "us-east-1"
# MLflow accounts: name -> (permission on the experiment, permission on the registered model).
# EDIT on a registered model includes setting aliases (MLflow's permission model), so only the gate
# holds more than READ on it: the gate registers versions, moves aliases and writes the version tags
# (deleting @challenger needs MANAGE); the trainer logs runs and models in the experiment.
ACCOUNTS = {"gate": ("EDIT", "MANAGE"), "trainer": ("EDIT", "READ"), "reader": ("READ", "READ")}
# S3 access key ids per holder, and the IAM policy of each (flows/s3_plane.py checks every request):
# the MLflow server reads and writes the artifact bucket, the worker and clients the DVC bucket (compose
# gives MinIO's users the same documents); only the operator deletes object versions or changes a bucket
S3_KEYS = {
    "mlflow": "textclf-mlflow-server",
    "worker": "textclf-worker",
    "client": "textclf-client",
    "operator": "textclf-operator",
}
_POLICIES = Path(__file__).resolve().parents[1] / "docker" / "minio"
S3_POLICIES = {
    "mlflow": _POLICIES / "textclf-mlflow.json",
    "worker": _POLICIES / "textclf-dvc.json",
    "client": _POLICIES / "textclf-dvc.json",
    "operator": {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": ["*"]}],
    },
}
# passed from the caller to the worker when set: locale, and a development checkout's source path
WORKER_PASSTHROUGH = ("LANG", "LC_ALL", "TZ", "PYTHONPATH")


class StackError(TextclfError):
    """A stack service did not start."""


def _start_time(pid: int) -> float | None:
    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else p.create_time()
    except psutil.Error:
        return None


def _alive(entry: dict | int | None) -> bool:
    """The process saved in ``entry`` ({"pid", "started"}) still runs: same pid AND same start time
    (a pid reused by an unrelated process is not ours; an entry without a start time is not trusted)."""
    if not isinstance(entry, dict) or not entry.get("pid") or entry.get("started") is None:
        return False
    pid = int(entry["pid"])
    try:  # reap a zombie child of this process
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    started = _start_time(pid)
    return started is not None and abs(started - float(entry["started"])) < 0.05


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@contextmanager
def _mlflow_user(user: str, password: str) -> Iterator[None]:
    """MLflow's clients read credentials from the environment: ``user``'s, for this block only."""
    with mock.patch.dict(
        os.environ, {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    ):
        yield


def create_mlflow_accounts(
    uri: str, admin_password: str, passwords: dict[str, str], experiment: str, model: str
) -> None:
    """As MLflow's admin: the experiment, the registered model, and the accounts of :data:`ACCOUNTS` with
    their permissions on both (idempotent: a rerun resets the passwords to ``passwords``)."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    with _mlflow_user("admin", admin_password):
        auth, c = get_app_client("basic-auth", tracking_uri=uri), MlflowClient(uri, uri)
        exp = c.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else c.create_experiment(experiment)
        if not c.search_registered_models(f"name='{model}'"):
            c.create_registered_model(
                model, description="textclf models; aliases moved by the promotion gate"
            )
        for user, (on_exp, on_model) in ACCOUNTS.items():
            try:
                auth.create_user(user, passwords[user])
            except MlflowException:
                auth.update_user_password(user, passwords[user])
            for kind, resource, permission in (
                ("experiment", exp_id, on_exp),
                ("registered_model", model, on_model),
            ):
                try:
                    auth.grant_user_permission(user, kind, resource, permission)
                except MlflowException as err:  # granted by an earlier `up`: set it to what ACCOUNTS says
                    if err.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    auth.revoke_user_permission(user, kind, resource)
                    auth.grant_user_permission(user, kind, resource, permission)


class Stack:
    def __init__(self, root: Path, names: MlflowConfig) -> None:
        self.dir = root.resolve() / ".stack"
        self.state_file = self.dir / "state.json"
        state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        if not (ports := state.get("ports")):
            ports = {s: free_port() for s in SERVICES[:4]}
        self.ports: dict[str, int] = ports
        self.pids: dict[str, dict] = state.get("pids", {})
        self.experiment, self.registered_model = names.experiment, names.registered_model

    # ------------------------------------------------------------------ secrets
    def secret(self, name: str) -> str:
        """A generated secret kept in ``.stack/secrets/<name>`` (0600), made on first use."""
        path = self.dir / "secrets" / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(path, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def _pgpass(self, role: str) -> Path:
        """A libpq/asyncpg password file holding only ``role``'s password (PGPASSFILE): no URI carries it."""
        path = self.dir / "secrets" / f"pgpass-{role}"
        _write_private(path, f"127.0.0.1:{self.ports['postgres']}:*:{role}:{self.secret(f'pg-{role}')}\n")
        return path

    # ------------------------------------------------------------------ variables
    def prefect_auth_string(self) -> str:
        return f"textclf:{self.secret('prefect-auth')}"

    def account_env(self, account: str | None) -> dict[str, str]:
        """MLflow credentials of ``account`` (None: anonymous), as MLflow's clients read them."""
        if account is None:
            return {}
        return {
            "MLFLOW_TRACKING_USERNAME": account,
            "MLFLOW_TRACKING_PASSWORD": self.secret(f"mlflow-{account}"),
        }

    def client_env(self) -> dict[str, str]:
        """What a client (a clone, the worker, a CI job) exports to use the stack: the trainer's MLflow
        account, and the gate's under TEXTCLF_GATE_* (the gate, promote and rollback switch to it)."""
        p = self.ports
        return {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{p['mlflow']}",
            **self.account_env("trainer"),
            "TEXTCLF_GATE_MLFLOW_USERNAME": "gate",
            "TEXTCLF_GATE_MLFLOW_PASSWORD": self.secret("mlflow-gate"),
            "PREFECT_API_URL": f"http://127.0.0.1:{p['prefect-server']}/api",
            "PREFECT_API_AUTH_STRING": self.prefect_auth_string(),
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{p['s3']}",  # boto3 and DVC's s3 remote read it
            **self._s3_key("client"),
        }

    def _s3_key(self, holder: str) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": S3_KEYS[holder],
            "AWS_SECRET_ACCESS_KEY": self.secret(f"s3-{holder}"),
            "AWS_DEFAULT_REGION": REGION,
        }

    def mlflow_env(self) -> dict[str, str]:
        """``mlflow server``'s settings (the variables its CLI reads)."""
        pg = f"127.0.0.1:{self.ports['postgres']}"
        return {
            "MLFLOW_BACKEND_STORE_URI": f"postgresql://mlflow@{pg}/mlflow",
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{MLFLOW_BUCKET}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.ports['s3']}",
            "MLFLOW_AUTH_CONFIG_PATH": str(self.dir / "mlflow-auth.ini"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.secret("mlflow-admin"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret("mlflow-flask"),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **self._s3_key("mlflow"),
        }

    def prefect_server_env(self) -> dict[str, str]:
        port = self.ports["prefect-server"]
        return {
            "PREFECT_API_DATABASE_CONNECTION_URL": (
                f"postgresql+asyncpg://prefect@127.0.0.1:{self.ports['postgres']}/prefect"
            ),
            "PREFECT_SERVER_API_AUTH_STRING": self.prefect_auth_string(),
            "PREFECT_API_AUTH_STRING": self.prefect_auth_string(),  # the server's own client calls
            "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": f"http://127.0.0.1:{port}",
            "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        }

    def server_env(self) -> dict[str, str]:
        """Every server setting (compose.yaml carries the same names)."""
        return {**self.mlflow_env(), **self.prefect_server_env()}

    def worker_env(self) -> dict[str, str]:
        """The worker's whole environment: a short explicit list, not the caller's environment. No
        database URL, no S3 key but the worker's own, no MLflow admin; the gate's account for the
        flow's gate task."""
        bin_dir = str(Path(sys.executable).parent)
        work = self.dir / "worker"
        client = self.client_env()
        env = {
            "PATH": f"{bin_dir}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work),
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
            **TELEMETRY_OFF,
            **{k: v for k, v in client.items() if not k.startswith("AWS_")},
            "AWS_ENDPOINT_URL": client["AWS_ENDPOINT_URL"],
            **self._s3_key("worker"),
            "PREFECT_HOME": str(work / ".prefect"),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        }
        env.update({k: os.environ[k] for k in WORKER_PASSTHROUGH if k in os.environ})
        return env

    # ------------------------------------------------------------------ processes
    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        """A server's environment: PATH/HOME-like basics of the caller, telemetry off, its own settings."""
        bin_dir = str(Path(sys.executable).parent)
        keep = ("HOME", "TMPDIR", *WORKER_PASSTHROUGH)
        return {
            **{k: os.environ[k] for k in keep if k in os.environ},
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            **TELEMETRY_OFF,
            **extra,
        }

    def _start(
        self, name: str, cmd: list[str], ready: Callable[[], bool], timeout: float, **kw: object
    ) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.pids[name] = {"pid": proc.pid, "started": _start_time(proc.pid)}
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
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.state_file.write_text(json.dumps({"ports": self.ports, "pids": self.pids}, indent=1))
        _write_private(self.dir / "env", "".join(f"export {k}={v}\n" for k, v in self.client_env().items()))

    def running(self) -> dict[str, bool]:
        return {s: _alive(self.pids.get(s)) for s in SERVICES}

    def up(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        running = self.running()
        starters = {
            "postgres": self._postgres,
            "s3": self._s3,
            "mlflow": self._mlflow,
            "prefect-server": self._prefect_server,
            "prefect-worker": self._worker,
        }
        # accounts and passwords are applied on every `up`, also to servers already running: a second
        # `up`, an `up` after `down` and an `up` after deleting a password file (rotation) all converge
        settle = {"postgres": self._postgres_roles, "mlflow": self._mlflow_accounts}
        for name, start in starters.items():
            if not running[name]:
                start()
            if name in settle:
                settle[name]()

    def down(self, purge: bool = False) -> None:
        for name in reversed(SERVICES):
            entry = self.pids.pop(name, None)
            if not _alive(entry):  # gone, or its pid now belongs to another process: never signal it
                continue
            pid = int(entry["pid"])  # type: ignore[index]
            try:
                os.killpg(pid, signal.SIGTERM)
                for _ in range(100):
                    if not _alive(entry):
                        break
                    time.sleep(0.1)
                else:
                    os.killpg(pid, signal.SIGKILL)
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
    def _psql(self, sql: str, db: str = "postgres") -> subprocess.CompletedProcess[str]:
        """``sql`` as the superuser, on psql's stdin: statements carry role passwords, and a command
        line is readable by every user of the machine (``ps``)."""
        cmd = [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.ports["postgres"]), "-U", PG_SUPERUSER]
        env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": self.secret("pg-superuser")}
        return subprocess.run(
            [*cmd, "-d", db, "-v", "ON_ERROR_STOP=1", "-tA"],
            input=sql,
            capture_output=True,
            text=True,
            env=env,
        )

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
            # the superuser's password goes in through a 0600 file the server's user can read, then is deleted
            pwdir = Path(tempfile.mkdtemp(prefix="textclf-pw-"))
            pwfile = pwdir / "pw"
            _write_private(pwfile, self.secret("pg-superuser") + "\n")
            if as_user:
                shutil.chown(pwdir, "postgres", "postgres")
                shutil.chown(pwfile, "postgres", "postgres")
            initdb = [
                str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "-E", "UTF8",
            ]  # fmt: skip
            try:
                done = subprocess.run([*as_user, *initdb], capture_output=True, text=True)
            finally:
                shutil.rmtree(pwdir, ignore_errors=True)
            if done.returncode != 0:
                raise StackError(f"initdb failed: {done.stderr.strip()}")
        server = [str(PG_BIN / "postgres"), "-D", str(data), "-p", port, "-h", "127.0.0.1", "-k", str(data)]
        ready = [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", port]
        self._start(
            "postgres",
            [*as_user, *server],
            lambda: subprocess.run(ready, capture_output=True).returncode == 0,
            60,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )

    def _postgres_roles(self) -> None:
        """A role and database per server, owned by that role, not the superuser; each role's password
        is the one on file (created, or altered after a rotation). Only the owners connect."""
        for role, dbs in (("mlflow", ("mlflow", "mlflow_auth")), ("prefect", ("prefect",))):
            pw = self.secret(f"pg-{role}")
            self._pgpass(role)  # the server's password file follows a rotation too
            exists = self._psql(f"SELECT 1 FROM pg_roles WHERE rolname='{role}'").stdout.strip()
            verb = "ALTER" if exists else "CREATE"
            done = self._psql(f"{verb} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{pw}'")
            if done.returncode != 0:
                raise StackError(f"creating role {role} failed: {done.stderr.strip()}")
            for db in dbs:
                if not self._psql(f"SELECT 1 FROM pg_database WHERE datname='{db}'").stdout.strip():
                    done = self._psql(f"CREATE DATABASE {db} OWNER {role}")
                    if done.returncode != 0:
                        raise StackError(f"creating database {db} failed: {done.stderr.strip()}")
                self._psql(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
        self._psql("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")  # the superuser's maintenance db

    def _s3(self) -> None:
        """The S3 plane (flows/s3_plane.py): its users, keys, policies and buckets come from a 0600 file
        it reads before listening; the keys are the ones on file when it starts."""
        users = {
            holder: {
                "key_id": S3_KEYS[holder],
                "secret": self.secret(f"s3-{holder}"),
                "policy": policy if isinstance(policy, dict) else json.loads(policy.read_text()),
            }
            for holder, policy in S3_POLICIES.items()
        }
        spec = self.dir / "secrets" / "s3-users.json"
        _write_private(spec, json.dumps({"buckets": [MLFLOW_BUCKET, DVC_BUCKET], "users": users}))
        port = str(self.ports["s3"])
        cmd = [sys.executable, str(Path(__file__).with_name("s3_plane.py")), "127.0.0.1", port, str(spec)]
        self._start("s3", cmd, self._http_ok(f"http://127.0.0.1:{port}"), 60, env=self._env({}))

    def _mlflow(self) -> None:
        port = str(self.ports["mlflow"])
        pg = f"127.0.0.1:{self.ports['postgres']}"
        _write_private(  # no secret in it: the database password comes from PGPASSFILE
            self.dir / "mlflow-auth.ini",
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = postgresql://mlflow@{pg}/mlflow_auth\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n",
        )
        cmd = [
            "mlflow",
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--serve-artifacts",
            "--workers",
            "1",
        ]
        cmd += ["--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"]
        env = self._env({**self.mlflow_env(), "PGPASSFILE": str(self._pgpass("mlflow"))})
        self._start("mlflow", cmd, self._http_ok(f"http://127.0.0.1:{port}/health"), 180, env=env)

    def _mlflow_accounts(self) -> None:
        create_mlflow_accounts(
            f"http://127.0.0.1:{self.ports['mlflow']}",
            self.secret("mlflow-admin"),
            {user: self.secret(f"mlflow-{user}") for user in ACCOUNTS},
            self.experiment,
            self.registered_model,
        )

    def _prefect_server(self) -> None:
        port = str(self.ports["prefect-server"])
        api = f"http://127.0.0.1:{port}/api"
        env = self._env(
            {
                **self.prefect_server_env(),
                "PREFECT_HOME": str(self.dir / "prefect"),
                "PGPASSFILE": str(self._pgpass("prefect")),
            }
        )
        cmd = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", port]
        self._start("prefect-server", cmd, self._http_ok(f"{api}/health"), 180, env=env)

    def _worker(self) -> None:
        work = self.dir / "worker"  # its own empty directory: flow runs clone the code from git
        work.mkdir(exist_ok=True)
        cmd = ["prefect", "worker", "start", "--pool", POOL, "--type", "process", "--name", "textclf-worker"]
        log = self.dir / "prefect-worker.log"
        start = log.stat().st_size if log.is_file() else 0
        self._start(
            "prefect-worker",
            cmd,
            lambda: b"started" in log.read_bytes()[start:],
            120,
            env=self.worker_env(),
            cwd=work,
        )

    def describe(self) -> str:
        lines = [f"{s:15} {'running' if up else 'stopped'}" for s, up in self.running().items()]
        p = self.ports
        lines += [
            "",
            f"MLflow UI   http://127.0.0.1:{p['mlflow']}  (accounts: {', '.join(ACCOUNTS)}, admin)",
            f"Prefect UI  http://127.0.0.1:{p['prefect-server']}  (basic auth: {self.dir / 'env'})",
            f"S3          http://127.0.0.1:{p['s3']}  (buckets {MLFLOW_BUCKET}, {DVC_BUCKET}, versioned; "
            f"operator key {S3_KEYS['operator']}, secret in secrets/s3-operator)",
            f"PostgreSQL  postgresql://{PG_SUPERUSER}@127.0.0.1:{p['postgres']}  (databases mlflow, prefect; "
            "scram-sha-256)",
            f"Secrets     {self.dir / 'secrets'}  (0600 files)",
            "",
            f"# source {self.dir / 'env'}   (0600: it holds the trainer's and the gate's passwords)",
        ]
        return "\n".join(lines)


if (
    __name__ == "__main__"
):  # compose.yaml's one-shot `mlflow-accounts`: python flows/stack.py mlflow-accounts URL
    if sys.argv[1:2] != ["mlflow-accounts"] or len(sys.argv) != 3:
        sys.exit("usage: stack.py mlflow-accounts TRACKING_URL  (passwords from MLFLOW_*_PASSWORD)")
    names = load_config(Path(__file__).resolve().parents[1] / "params.yaml").mlflow  # the image's copy
    for _attempt in range(60):  # the server may still be starting
        try:
            create_mlflow_accounts(
                sys.argv[2],
                os.environ["MLFLOW_ADMIN_PASSWORD"],
                {user: os.environ[f"MLFLOW_{user.upper()}_PASSWORD"] for user in ACCOUNTS},
                os.environ.get("TEXTCLF_EXPERIMENT", names.experiment),
                os.environ.get("TEXTCLF_REGISTERED_MODEL", names.registered_model),
            )
            break
        except Exception as err:  # noqa: BLE001 - retried, then reported
            print(f"mlflow-accounts: {err}; retrying", file=sys.stderr)
            time.sleep(5)
    else:
        sys.exit("mlflow-accounts: MLflow never accepted the admin")

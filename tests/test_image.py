"""The champion's Bento as a real OCI image, built and run with a real Docker daemon.

This machine reaches no container registry and not the PyTorch wheel site, so the test first builds the
offline stand-in for ``python:3.11-slim`` with ``scripts/offline-base-image.sh`` (its rootfs and wheels
are cached in $TEXTCLF_IMAGE_CACHE between runs). It starts its own dockerd (data and exec roots in a
temp folder, its own socket; the ``dockerd`` fixture of conftest.py) and stops it by PID afterwards.
Needs root, docker.io and debootstrap (`.ci/run` installs them).
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
from textclf.serving import auth

pytestmark = pytest.mark.image
BIN = Path(sys.executable).parent
TEXTS = ["质量很好，第3次购买，非常满意", "太差了，第9次买到坏的，很失望", "第一次买，还行"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> dict:
    """A tiny project through the main job: a promoted champion and its Bento."""
    proj = make_project(tmp_path_factory.mktemp("image"), repo_root, toy_corpus(), TINY)
    run = subprocess.run([str(BIN / "textclf"), "run"], cwd=proj, env=env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    bento = next(line.split()[-1] for line in run.stdout.splitlines() if "bento textclf:" in line)
    return {"proj": proj, "bento": bento}


@pytest.fixture(scope="module")
def image(dockerd: dict[str, str], champion: dict, repo_root: Path) -> Iterator[dict]:
    proj = champion["proj"]
    home = Path(os.environ["BENTOML_HOME"])  # the session's (conftest), which `textclf run` used
    requirements = next(
        home.glob(f"bentos/textclf/{champion['bento'].split(':')[1]}/env/python/requirements.txt")
    )
    timings = {}
    start = time.monotonic()
    base = subprocess.run(
        ["bash", str(repo_root / "scripts" / "offline-base-image.sh"), str(requirements)],
        env={**dockerd, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert base.returncode == 0, base.stderr[-3000:]
    timings["base_image_s"] = time.monotonic() - start
    start = time.monotonic()
    build = subprocess.run(
        [str(BIN / "textclf"), "package", "champion", "--image", "--image-tag", "textclf-test:champion"],
        cwd=proj,
        env={**dockerd, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    timings["build_s"] = time.monotonic() - start
    yield {"tag": "textclf-test:champion", "env": dockerd, "timings": timings, **champion}


TOKEN, TOKEN_ENTRY = auth.issue(["classify", "read"])
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _run_container(image: dict) -> tuple[str, str, float]:
    """Start the image on the host network; a port taken between picking and binding it (other tiers
    start servers beside this one) gets a new port, up to three times."""
    for _attempt in range(3):
        try:
            return _try_container(image)
        except PortTaken as err:
            subprocess.run(["docker", "rm", "-f", str(err)], env=image["env"], capture_output=True)
    return _try_container(image)


class PortTaken(Exception):
    """The container's port was bound by another process first (the message is the container's name)."""


def _try_container(image: dict) -> tuple[str, str, float]:
    from textclf.serving.package import free_port

    port = free_port()
    name = f"textclf-test-{port}"
    start = time.monotonic()
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "-e",  # the service's tokens, as an orchestrator's secret would pass them
            f"{auth.TOKENS_ENV}={json.dumps({'image-test': TOKEN_ENTRY})}",
            image["tag"],
            "serve",
            "--port",
            str(port),
        ],
        env=image["env"],
        check=True,
        capture_output=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return name, base, time.monotonic() - start
        except httpx.HTTPError:
            running = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Running}}", name],
                env=image["env"],
                capture_output=True,
                text=True,
            )
            if running.stdout.strip() == "false":  # it exited: no point waiting for it
                break
            time.sleep(0.5)
    logs = subprocess.run(["docker", "logs", name], env=image["env"], capture_output=True, text=True)
    if "Address already in use" in logs.stdout + logs.stderr:
        raise PortTaken(name)
    raise AssertionError(f"container not ready:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")


def test_image_answers_like_the_champion_and_stops_on_sigterm(image: dict) -> None:
    from textclf.config import load_config
    from textclf.model.predictor import Predictor
    from textclf.serving.release import served_model_dir
    from textclf.tracking import registry as R
    from textclf.tracking.store import client

    cfg = load_config(image["proj"] / "params.yaml")
    c = client(cfg, image["proj"])
    mv = c.get_model_version_by_alias(cfg.mlflow.registered_model, R.CHAMPION)
    offline = Predictor(  # on the runtime serve.runtime picks for this version, as the image does
        served_model_dir(
            c,
            cfg.mlflow.registered_model,
            mv.version,
            cfg.serve.runtime,
            image["proj"] / ".cache" / "offline",
        ),
        device="cpu",
    )
    expected = {p.label: p for p in offline.predict(TEXTS)}
    name, base, ready_s = _run_container(image)
    try:
        anonymous = httpx.post(f"{base}/classify", json={"texts": TEXTS}, timeout=60)
        assert anonymous.status_code == 401, anonymous.text
        served = httpx.post(f"{base}/classify", json={"texts": TEXTS}, headers=AUTH, timeout=60)
        assert served.status_code == 200, served.text
        for got, want in zip(served.json(), offline.predict(TEXTS), strict=True):
            assert got["label"] == want.label
            assert all(abs(got["probabilities"][k] - v) < 1e-5 for k, v in want.probabilities.items())
        assert expected
        meta = httpx.get(f"{base}/metadata", headers=AUTH, timeout=30).json()
        lineage = meta["lineage"]
        assert lineage["registered_version"] == str(mv.version) and lineage["mlflow_run_id"] == mv.run_id
        assert meta["runtime"] == offline.runtime
        for body, status in (
            (b'{"texts": ["a"', 400),
            (b'{"texts": []}', 400),
            (b'{"texts": [""]}', 422),
            (json.dumps({"texts": ["a"] * 65}).encode(), 413),
        ):
            assert (
                httpx.post(
                    f"{base}/classify",
                    content=body,
                    headers={**AUTH, "content-type": "application/json"},
                    timeout=30,
                ).status_code
                == status
            ), body
        start = time.monotonic()
        stop = subprocess.run(
            ["docker", "stop", "-t", "30", name], env=image["env"], capture_output=True, text=True
        )
        stopped_s = time.monotonic() - start
        state = json.loads(
            subprocess.run(
                ["docker", "inspect", name], env=image["env"], capture_output=True, text=True
            ).stdout
        )[0]["State"]
        assert stop.returncode == 0 and not state["Running"] and stopped_s < 30, (
            state
        )  # SIGTERM, not the kill
        assert state["ExitCode"] in (0, 143), state
    finally:
        subprocess.run(["docker", "rm", "-f", name], env=image["env"], capture_output=True)
    history = subprocess.run(
        ["docker", "history", "--format", "{{.Size}}\t{{.CreatedBy}}", image["tag"]],
        env=image["env"],
        capture_output=True,
        text=True,
    ).stdout
    size = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", image["tag"]],
        env=image["env"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    report = {**image["timings"], "ready_s": ready_s, "image_mb": int(size) / 2**20, "stop_s": stopped_s}
    print(json.dumps(report), "\n", history)  # shown with -s: the numbers of the closing note

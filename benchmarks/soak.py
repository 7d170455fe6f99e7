"""Soak: the served Bento under steady load for a long time, with every request recorded.

Serves the trained model (``paths.model``; a random BERT of the configured architecture when there is
none) from a Bento built as ``textclf package`` builds it, with ``serve.monitoring`` on at sample rate
1.0, then drives it with N clients for ``--minutes``. It prints the requests answered, errors (non-200
or transport), traffic records written and dropped (``/metrics``), and the RSS of the server's process
tree at the start (after warm-up) and at the end. Goal: 0 errors, records = texts answered, RSS growth
at most 5%.

    .venv/bin/python benchmarks/soak.py --minutes 10 --clients 16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import drive, load_texts, random_model_dir  # noqa: E402

from textclf.config import load_config  # noqa: E402
from textclf.model.predictor import PREPROCESSING_FILE  # noqa: E402


def server_rss_mb() -> float:
    """RSS of every process this script started (bentoml serve and its workers), in MB."""
    return sum(p.memory_info().rss for p in psutil.Process().children(recursive=True)) / 2**20


def dropped(base: str) -> float:
    lines = httpx.get(f"{base}/metrics", timeout=10).text.splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith("textclf_monitoring_dropped_total"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds at the same concurrency first")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds between RSS samples")
    args = parser.parse_args(argv)

    cfg = load_config(args.params)
    home = Path(tempfile.mkdtemp(prefix="textclf-soak-bentoml-"))
    records_dir = Path(tempfile.mkdtemp(prefix="textclf-soak-records-"))
    os.environ.update(
        BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", TEXTCLF_MONITORING_DIR=str(records_dir)
    )
    from textclf.data.records import TRAFFIC, read_records
    from textclf.serving import package

    texts, source = load_texts(cfg, 2000, seed=0)
    model_dir = cfg.paths.model
    if not (model_dir / PREPROCESSING_FILE).is_file():
        model_dir = random_model_dir(cfg, texts, Path(tempfile.mkdtemp(prefix="textclf-soak-model-")))
    tag = package.import_model_dir(model_dir, cfg.serve.model_store_name, {"purpose": "soak"})
    monitoring = cfg.serve.monitoring.model_copy(update={"enabled": True, "sample_rate": 1.0})
    # Loopback, one client identity: no tokens (serve.auth none, explicitly), so no per-token rate limit.
    serve_cfg = cfg.serve.model_copy(update={"monitoring": monitoring, "auth": "none"})
    bento = package.build_bento(tag, serve_cfg, Path.cwd(), labels={"purpose": "soak"})
    with package.served(bento, home / "serve.log", timeout_s=180) as base:
        # Warm up at the soak's own concurrency: the allocator and BentoML's batches settle at their
        # working size first, so what follows measures growth under steady load, not the first minute.
        warm = drive(base, texts, args.clients, args.warmup, 1)
        rss_start = server_rss_mb()
        samples, stop = [rss_start], threading.Event()

        def sample() -> None:
            while not stop.wait(args.sample_every):
                samples.append(server_rss_mb())

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.monotonic()
        row = drive(base, texts, args.clients, args.minutes * 60, 1)
        elapsed = time.monotonic() - t0
        stop.set()
        sampler.join()
        rss_end = server_rss_mb()
        n_dropped = dropped(base)
    # The service drains its queue on shutdown: every answered text is on disk now.
    written = sum(1 for _ in read_records(records_dir, TRAFFIC))
    answered = warm["requests"] + row["requests"]
    print(f"texts: {source}; {args.clients} clients for {elapsed / 60:.1f} min, recording every request")
    print(
        f"requests {row['requests']} ({row['req_per_s']:.1f}/s, p95 {row['p95_ms']:.0f} ms), "
        f"errors {row['errors']} {row['error_kinds'] or ''}"
    )
    print(f"records written {written} for {answered} answered (warm-up included), dropped {n_dropped:.0f}")
    print(f"server RSS {rss_start:.0f} MB -> {rss_end:.0f} MB ({rss_end / rss_start - 1:+.1%})")
    print(f"RSS every {args.sample_every:.0f} s (MB): " + " ".join(f"{x:.0f}" for x in samples + [rss_end]))
    return 0 if row["errors"] == 0 and written == answered else 1


if __name__ == "__main__":
    sys.exit(main())

"""fp32 vs bf16 on this machine, in one run: training samples/s through the project's Trainer path, and
single-text / batched inference through the Predictor's ``torch`` and ``bf16`` runtimes.

The model is params.yaml's (the pip: source converted and fitted to the train split, as training does);
its weights are untrained: speed does not depend on them. Rounds alternate fp32 and bf16 so that a
machine whose load drifts hurts both alike; bf16's speedup (> 1: faster) is printed per round and as the
median.
Measure alone: nothing else on the cores.

  .venv/bin/python benchmarks/precision.py --prepared artifacts/prepared --steps 20 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from textclf.config import apply_overrides, load_config
from textclf.data.normalize import normalize
from textclf.model.build import build_classifier, build_tokenizer, local_pretrained
from textclf.model.predictor import Predictor, Preprocessing
from textclf.train.data import encode, resolve_labels
from textclf.train.trainer import CountingTrainer, native_bf16, training_arguments


def train_rate(cfg, train, labels, steps: int, bf16: bool, out: Path) -> float:
    from transformers import DataCollatorWithPadding, set_seed

    set_seed(0)
    texts = [normalize(t, cfg.prepare.normalize) for t in train["text"]]
    tokenizer = build_tokenizer(cfg.model, texts)
    ids = {lab: i for i, lab in enumerate(labels)}
    args = training_arguments(
        cfg, out, max_steps=steps, bf16=bf16, eval_strategy="no", save_strategy="no",
        load_best_model_at_end=False, logging_steps=steps,
    )  # fmt: skip
    trainer = CountingTrainer(
        model=build_classifier(cfg.model, tokenizer, labels),
        args=args,
        train_dataset=encode(tokenizer, texts, [ids[v] for v in train["label"]], cfg.model.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    trainer.train()
    return trainer.samples / (time.perf_counter() - start)


def inference(model_dir: Path, runtime: str, texts: list[str], batch: int) -> dict[str, float]:
    import torch

    predictor = Predictor(model_dir, device="cpu", runtime=runtime)
    torch.set_num_threads(1)  # what a served worker runs (serve.torch_threads)
    for t in texts[:5]:
        predictor.predict_proba([t])
    times = []
    for t in texts:
        start = time.perf_counter()
        predictor.predict_proba([t])
        times.append((time.perf_counter() - start) * 1000)
    torch.set_num_threads(2)
    start = time.perf_counter()
    predictor.predict_proba(texts, batch_size=batch)
    return {
        "single_p50_ms": float(np.percentile(times, 50)),
        "single_p95_ms": float(np.percentile(times, 95)),
        "batched_texts_per_s": len(texts) / (time.perf_counter() - start),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per training measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--texts", type=int, default=200, help="test texts for inference")
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    cfg = apply_overrides(load_config(a.params), {"train": {"num_threads": 2}})
    train = pd.read_parquet(a.prepared / "train.parquet")
    val = pd.read_parquet(a.prepared / "val.parquet")
    texts = pd.read_parquet(a.prepared / "test.parquet")["text"].head(a.texts).tolist()
    labels = resolve_labels(cfg.data.labels, train, val)
    work = Path(tempfile.mkdtemp(prefix="textclf-precision-"))
    fit = [normalize(t, cfg.prepare.normalize) for t in train["text"]] if cfg.model.vocab == "train" else []
    model_cfg, _ = local_pretrained(cfg.model, cfg.paths.base_models, fit, work / "base")
    cfg = cfg.model_copy(update={"model": model_cfg})
    model_dir = work / "model"
    tokenizer = build_tokenizer(cfg.model, [])
    build_classifier(cfg.model, tokenizer, labels).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    Preprocessing(cfg.prepare.normalize, cfg.model.max_length).save(model_dir)

    rounds = []
    for r in range(a.rounds):
        row: dict[str, dict[str, float]] = {}
        for name, bf16 in (("fp32", False), ("bf16", True)):
            rate = train_rate(cfg, train, labels, a.steps, bf16, work / f"run{r}{name}")
            row[name] = {"train_samples_per_s": rate} | inference(
                model_dir, "torch" if name == "fp32" else "bf16", texts, a.batch
            )
        # speedup of bf16: a rate's ratio bf16/fp32, a latency's fp32/bf16 (> 1: bf16 is faster)
        row["speedup"] = {
            k: row["fp32"][k] / row["bf16"][k] if k.endswith("_ms") else row["bf16"][k] / row["fp32"][k]
            for k in row["fp32"]
        }
        rounds.append(row)
        print(json.dumps({"round": r, **{k: {m: round(v, 2) for m, v in d.items()} for k, d in row.items()}}))
    ratio = {k: round(statistics.median(r["speedup"][k] for r in rounds), 2) for k in rounds[0]["fp32"]}
    print(json.dumps({"native_bf16": native_bf16(), "median bf16 speedup": ratio, "steps": a.steps,
                      "layers": cfg.model.layers, "max_length": cfg.model.max_length}))  # fmt: skip


if __name__ == "__main__":
    main()

"""Train on the prepared splits with the GPU path (``train.gpu_profile``, bf16) and print what it did.

    python benchmarks/gpu_train.py --prepared artifacts/prepared [--variants VARIANTS.json] [--out OUT.json]

Runs ``textclf.train.trainer.train_model`` directly (no MLflow, no DVC: a bare GPU machine needs only
torch, transformers, pandas, scikit-learn and pydantic) once per variant (a dict of params overrides;
default: the configured model as is; ``{"train": {"precision": "fp32"}}`` turns bf16 off) and prints one
row per run: precision, steps, wall time, samples/s, peak GPU memory, the best validation accuracy /
macro-F1, and the kept model's test macro-F1 (reported only: nothing is chosen on test).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from textclf.config import apply_overrides, load_config
from textclf.data.prepare import read_split
from textclf.evaluate.metrics import macro_f1
from textclf.model.predictor import Predictor
from textclf.train.trainer import effective_config, train_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    parser.add_argument("--variants", type=Path, help='JSON {"name": {overrides}, ...}')
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args()

    import torch

    base = effective_config(load_config(ns.params))  # the GPU profile applies when CUDA is present
    variants = json.loads(ns.variants.read_text()) if ns.variants else {"default": {}}
    train, val, test = (read_split(ns.prepared, s) for s in ("train", "val", "test"))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    print(f"device: {device}; torch {torch.__version__}; bf16: {bf16}")
    rows = []
    for name, overrides in variants.items():
        cfg = apply_overrides(base, overrides)
        with tempfile.TemporaryDirectory() as tmp:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = train_model(cfg, train, val, Path(tmp) / "model", Path(tmp) / "ckpt")
            wall = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
            predictor = Predictor(Path(tmp) / "model")
            probs, _ = predictor.predict_proba(test["text"].tolist(), batch_size=cfg.train.eval_batch_size)
            ids = {label: i for i, label in enumerate(predictor.labels)}
            y = [ids[label] for label in test["label"]]
            rows.append(
                {
                    "variant": name,
                    "precision": "bf16" if cfg.train.precision == "auto" and bf16 else "fp32",
                    "batch_size": cfg.train.batch_size,
                    "steps": result.global_step,
                    "wall_s": round(wall, 1),
                    "samples_per_s": round(result.train_samples_per_s, 1),
                    "peak_gib": round(peak, 2),
                    "val_accuracy": round(result.best.get("val_accuracy", float("nan")), 4),
                    "val_macro_f1": round(result.best.get("val_macro_f1", float("nan")), 4),
                    "best_epoch": result.best.get("epoch"),
                    "test_macro_f1": round(macro_f1(y, probs.argmax(axis=1), len(ids)), 4),
                }
            )
        print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    if ns.out:
        ns.out.write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

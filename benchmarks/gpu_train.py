"""Train on the prepared splits with the GPU path (``train.gpu_profile``, bf16) and print what it did.

    python benchmarks/gpu_train.py --prepared artifacts/prepared [--variants VARIANTS.json] [--out OUT.json]

Runs ``textclf.train.trainer.train_model`` directly (no MLflow, no DVC: a bare GPU machine needs only
torch, transformers, pandas, scikit-learn and pydantic) once per variant (a dict of params overrides;
default: the configured model as is) and prints one row per run: device, precision, steps, wall time,
samples/s and the best validation accuracy / macro-F1. The test split is not read.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from textclf.config import apply_overrides, load_config
from textclf.data.prepare import read_split
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
    train, val = read_split(ns.prepared, "train"), read_split(ns.prepared, "val")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(
        f"device: {device}; torch {torch.__version__}; "
        f"bf16: {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}"
    )
    rows = []
    for name, overrides in variants.items():
        cfg = apply_overrides(base, overrides)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = train_model(cfg, train, val, Path(tmp) / "model", Path(tmp) / "ckpt")
            rows.append(
                {
                    "variant": name,
                    "batch_size": cfg.train.batch_size,
                    "steps": result.global_step,
                    "wall_s": round(time.perf_counter() - start, 1),
                    "samples_per_s": round(result.train_samples_per_s, 1),
                    "val_accuracy": round(result.best.get("val_accuracy", float("nan")), 4),
                    "val_macro_f1": round(result.best.get("val_macro_f1", float("nan")), 4),
                    "best_epoch": result.best.get("epoch"),
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

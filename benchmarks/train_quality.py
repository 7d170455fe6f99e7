"""The project's training path on prepared splits, scored like ``../shared/tools/finetune_reference.py``.

Trains through ``textclf.train.trainer.train_model`` with params.yaml plus ``-S key=value`` overrides,
then prints one JSON line: train seconds, val and test macro-F1 of the model, of the project's n-gram
baseline (evaluate.baseline) and McNemar on test against it (b = baseline alone right, c = model alone
right). Choose settings on val; test is printed for the record, never to choose. Writes nothing into the
project (the model goes to --out).

  .venv/bin/python benchmarks/train_quality.py --prepared artifacts/prepared -S train.seed=0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import yaml

from textclf.config import apply_overrides, load_config
from textclf.evaluate import metrics as M
from textclf.evaluate.baseline import train_baseline
from textclf.gate.stats import mcnemar_exact
from textclf.model.predictor import Predictor
from textclf.train.trainer import train_model


def _override(pair: str) -> dict:
    key, _, value = pair.partition("=")
    out: dict = yaml.safe_load(value)
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=Path("artifacts/train_quality"))
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="KEY=VALUE (repeatable)")
    a = ap.parse_args()
    cfg = load_config(a.params)
    for pair in a.overrides:
        cfg = apply_overrides(cfg, _override(pair))
    train, val, test = (pd.read_parquet(a.prepared / f"{s}.parquet") for s in ("train", "val", "test"))
    start = time.perf_counter()
    result = train_model(cfg, train, val, a.out / "model", a.out / "ckpt", base_models=cfg.paths.base_models)
    train_s = time.perf_counter() - start
    predictor = Predictor(a.out / "model", device="cpu")
    labels = predictor.labels
    baseline = train_baseline(train["text"], train["label"], cfg.evaluate.baseline, labels)
    row: dict = {"overrides": a.overrides, "train_s": round(train_s), "steps": result.global_step}
    for name, split in (("val", val), ("test", test)):
        y = M.encode_labels(split["label"].tolist(), labels)
        pred = predictor.predict_proba(split["text"].tolist())[0].argmax(1)
        base = baseline.predict_proba(split["text"].tolist()).argmax(1)
        row[f"{name}_f1"] = round(M.macro_f1(y, pred, len(labels)), 4)
        row[f"baseline_{name}_f1"] = round(M.macro_f1(y, base, len(labels)), 4)
        if name == "test":
            m = mcnemar_exact(base == y, pred == y)
            row["test_acc"] = round(M.accuracy(y, pred), 4)
            row["mcnemar"] = {"b": m.b, "c": m.c, "p": float(f"{m.p_value:.2g}")}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

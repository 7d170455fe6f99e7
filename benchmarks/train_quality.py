"""The project's training path on prepared splits, scored like ``../shared/tools/finetune_reference.py``.

Trains through ``textclf.train.trainer.train_model`` with params.yaml plus ``-S key=value`` overrides,
then prints one JSON line: train seconds, val and test macro-F1 of the model, of the project's n-gram
baseline (evaluate.baseline) and McNemar on test against it (b = baseline alone right, c = model alone
right). Choose settings on val; test is printed for the record, never to choose. Writes nothing into the
project (the model goes to --out).

Also the blend of the two (issue #32): probabilities ``w * model + (1 - w) * baseline``, ``w`` from
0, 0.1, ..., 1 chosen on val macro-F1 (the largest ``w`` among ties), then scored on test like the model.
``--model DIR`` scores an already trained model directory instead of training one.

  .venv/bin/python benchmarks/train_quality.py --prepared artifacts/prepared -S train.seed=0
  .venv/bin/python benchmarks/train_quality.py --prepared artifacts/prepared --model artifacts/model
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
from textclf.gate.stats import mcnemar_exact
from textclf.model.ngram import train_ngram
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
    ap.add_argument("--model", type=Path, help="score this trained model directory; train nothing")
    a = ap.parse_args()
    cfg = load_config(a.params)
    for pair in a.overrides:
        cfg = apply_overrides(cfg, _override(pair))
    train, val, test = (pd.read_parquet(a.prepared / f"{s}.parquet") for s in ("train", "val", "test"))
    row: dict = {"overrides": a.overrides}
    model_dir = a.model
    if model_dir is None:
        start = time.perf_counter()
        model_dir = a.out / "model"
        result = train_model(cfg, train, val, model_dir, a.out / "ckpt", base_models=cfg.paths.base_models)
        row |= {"train_s": round(time.perf_counter() - start), "steps": result.global_step}
    predictor = Predictor(model_dir, device="cpu")
    row["dir_family"] = predictor.family.describe()
    encoder = predictor.encoder  # the encoder alone: the blend is chosen again below, the same way
    assert encoder is not None, "train_quality compares an encoder (alone or blended) with the baseline"
    labels = predictor.labels
    baseline = train_ngram(train["text"], train["label"], cfg.evaluate.baseline, labels)
    proba, gold = {}, {}
    for name, split in (("val", val), ("test", test)):
        gold[name] = M.encode_labels(split["label"].tolist(), labels)
        proba[name] = (
            encoder.forward(predictor.normalize(split["text"].tolist()), cfg.train.eval_batch_size)[0],
            baseline.predict_proba(split["text"].tolist()),
        )
    weights = [w / 10 for w in range(11)]
    val_f1 = [M.macro_f1(gold["val"], _blend(proba["val"], w).argmax(1), len(labels)) for w in weights]
    w = max(w for w, f1 in zip(weights, val_f1, strict=True) if f1 == max(val_f1))
    y = gold["test"]
    base = proba["test"][1].argmax(1)
    for who, make in (("", lambda p: p[0]), ("blend_", lambda p: _blend(p, w))):
        for name in ("val", "test"):
            row[f"{who}{name}_f1"] = round(
                M.macro_f1(gold[name], make(proba[name]).argmax(1), len(labels)), 4
            )
        pred = make(proba["test"]).argmax(1)
        m = mcnemar_exact(base == y, pred == y)
        row[f"{who}test_acc"] = round(M.accuracy(y, pred), 4)
        row[f"{who}mcnemar"] = {"b": m.b, "c": m.c, "p": float(f"{m.p_value:.2g}")}
    for name in ("val", "test"):
        row[f"baseline_{name}_f1"] = round(M.macro_f1(gold[name], proba[name][1].argmax(1), len(labels)), 4)
    row["blend_weight"] = w
    print(json.dumps(row), flush=True)


def _blend(pair: tuple, w: float):  # noqa: ANN202 - numpy arrays
    return w * pair[0] + (1 - w) * pair[1]


if __name__ == "__main__":
    main()

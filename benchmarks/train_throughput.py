"""Training throughput: textclf's batching vs. padding to max length vs. HF Trainer defaults.

Variants (same model init, data, threads, batch size and number of optimizer steps):
  a  textclf: length-grouped batches + dynamic padding (cfg.train.group_by_length)
  b  naive: random batches, every example padded to --pad-length
  c  HF Trainer defaults: random batches + dynamic padding (the default collator)

All variants truncate at the same --pad-length so they see the same tokens; only batching and
padding differ. Prints samples/s, tokens processed, padding efficiency and val accuracy, plus the
ratios a/b and a/c. Uses train and val only.

  .venv/bin/python benchmarks/train_throughput.py --prepared artifacts/prepared --steps 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from textclf.config import apply_overrides, load_config
from textclf.data.normalize import normalize
from textclf.model.build import build_classifier, build_tokenizer, local_pretrained
from textclf.train.data import encode, resolve_labels
from textclf.train.trainer import CountingTrainer, compute_metrics, training_arguments


class _PadToMax:
    """Collator that pads every batch to a fixed length (the naive baseline)."""

    def __init__(self, tokenizer: Any, length: int) -> None:
        self.tokenizer, self.length = tokenizer, length

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.tokenizer.pad(features, padding="max_length", max_length=self.length, return_tensors="pt")


def run_variant(name: str, cfg: Any, train: pd.DataFrame, val: pd.DataFrame, steps: int, out: Path) -> dict:
    from transformers import DataCollatorWithPadding, set_seed

    labels = resolve_labels(cfg.data.labels, train, val)
    label2id = {lab: i for i, lab in enumerate(labels)}
    train_texts = [normalize(t, cfg.prepare.normalize) for t in train["text"]]
    val_texts = [normalize(t, cfg.prepare.normalize) for t in val["text"]]
    set_seed(cfg.train.seed)
    fit = train_texts if cfg.model.vocab == "train" else []
    model_cfg, _ = local_pretrained(cfg.model, cfg.paths.base_models, fit, out / "base")
    cfg = cfg.model_copy(update={"model": model_cfg})
    tokenizer = build_tokenizer(cfg.model, train_texts)
    model = build_classifier(cfg.model, tokenizer, labels)
    max_len = cfg.model.max_length
    train_ids = [label2id[str(v)] for v in train["label"]]
    val_ids = [label2id[str(v)] for v in val["label"]]
    train_ds = encode(tokenizer, train_texts, train_ids, max_len)
    val_ds = encode(tokenizer, val_texts, val_ids, max_len)
    collator = _PadToMax(tokenizer, max_len) if name == "b" else DataCollatorWithPadding(tokenizer)
    args = training_arguments(
        cfg,
        out / name,
        max_steps=steps,
        train_sampling_strategy="group_by_length" if name == "a" else "random",
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        logging_steps=max(steps // 5, 1),
        disable_tqdm=True,
    )
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    return {
        "variant": name,
        "train_s": round(seconds, 2),
        "samples_per_s": round(trainer.samples / seconds, 1),
        "tokens_processed": trainer.padded_tokens,
        "real_tokens": trainer.real_tokens,
        "padding_efficiency": round(trainer.real_tokens / max(trainer.padded_tokens, 1), 3),
        "val_accuracy": round(float(metrics["eval_accuracy"]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--prepared", type=Path, default=None, help="folder with train/val.parquet")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per variant")
    parser.add_argument("--pad-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=None, help="subsample train rows (speed)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/textclf-train-bench"))
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    ns = parser.parse_args()

    import torch

    torch.set_num_threads(ns.threads)
    cfg = load_config(ns.params)
    cfg = apply_overrides(cfg, {"model": {"max_length": ns.pad_length}, "train": {"num_threads": ns.threads}})
    prepared = ns.prepared or cfg.paths.prepared
    train = pd.read_parquet(prepared / "train.parquet")
    val = pd.read_parquet(prepared / "val.parquet")
    if ns.max_train:
        train = train.sample(n=min(ns.max_train, len(train)), random_state=cfg.train.seed)

    rows = [run_variant(v, cfg, train, val, ns.steps, ns.out) for v in ("a", "b", "c")]
    by = {r["variant"]: r for r in rows}
    cols = ["variant", "train_s", "samples_per_s", "tokens_processed", "padding_efficiency", "val_accuracy"]
    print("\n" + "  ".join(f"{c:>18}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]!s:>18}" for c in cols))
    ratios = {
        f"a/{o}": {
            "samples_per_s": round(by["a"]["samples_per_s"] / by[o]["samples_per_s"], 2),
            "tokens_processed": round(by["a"]["tokens_processed"] / by[o]["tokens_processed"], 3),
        }
        for o in ("b", "c")
    }
    print(json.dumps(ratios, indent=2))
    if ns.json:
        ns.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "steps": ns.steps}, indent=2) + "\n")


if __name__ == "__main__":
    main()

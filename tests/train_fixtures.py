"""Tiny generated data and a tiny config for training tests (shared with the torchrun script)."""

from __future__ import annotations

import random
from typing import Any

import pandas as pd

from projects import params
from textclf.config import Config

# Each class has its own marker characters; the filler is shared, so a model must find the markers.
MARKERS = {"neg": "差烂坏糟", "pos": "好棒赞美", "mid": "般凑行中"}
FILLER = "的了是我这个酒店房间服务环境早餐位置价格"


def make_frame(n: int, classes: tuple[str, ...] = ("neg", "pos"), seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = classes[i % len(classes)]
        chars = [rng.choice(FILLER) for _ in range(rng.randint(3, 24))]
        for _ in range(rng.randint(1, 3)):
            chars.insert(rng.randint(0, len(chars)), rng.choice(MARKERS[label]))
        rows.append({"id": f"r{i}", "text": "".join(chars), "label": label})
    return pd.DataFrame(rows)


def tiny_config(**train_over: Any) -> Config:
    train = {
        "epochs": 3,
        "batch_size": 16,
        "eval_batch_size": 64,
        "learning_rate": 5e-3,
        "warmup_ratio": 0.0,
        "checkpoint_steps": 4,
        "save_total_limit": 2,
        "logging_steps": 5,
        "num_threads": 1,
        "early_stopping_patience": 2,
    }
    train.update(train_over)
    return params(
        {
            "data": {"labels": None},
            "model": {
                "pretrained": None,
                "max_length": 32,
                "architecture": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
                "tokenizer": {"min_frequency": 1, "vocab_size": 200},
            },
            "train": train,
        }
    )

"""Run by ``torchrun`` in tests/test_train.py: every rank trains; each writes its TrainResult summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from textclf.train.trainer import train_model  # noqa: E402
from train_fixtures import make_frame, tiny_config  # noqa: E402


def main(out: Path) -> None:
    result = train_model(
        tiny_config(), make_frame(200, seed=1), make_frame(40, seed=2), out / "model", out / "ckpt"
    )
    summary = {
        "world_size": result.world_size,
        "is_main_process": result.is_main_process,
        "global_step": result.global_step,
        "device": result.device,
        "val_accuracy": result.best.get("val_accuracy"),
    }
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    (out / f"rank{rank}.json").write_text(json.dumps(summary), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

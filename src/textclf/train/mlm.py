"""Optional masked-LM pretraining on the training texts (plus an unlabeled corpus) before fine-tuning."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textclf.config import ModelConfig, NormalizeConfig
from textclf.data.normalize import normalize
from textclf.errors import DataError
from textclf.model.build import build_masked_lm
from textclf.train.data import EncodedDataset

logger = logging.getLogger(__name__)

DONE_MARKER = "textclf_mlm_done"


def read_extra_corpus(path: Path, max_lines: int | None, cfg: NormalizeConfig) -> list[str]:
    """Non-blank lines of ``path`` (normalized), at most ``max_lines``."""
    if not path.is_file():
        raise DataError(f"model.mlm.extra_corpus not found: {path}")
    out: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            text = normalize(line, cfg)
            if text:
                out.append(text)
                if max_lines is not None and len(out) >= max_lines:
                    break
    return out


def pretrain_mlm(
    cfg: ModelConfig,
    normalization: NormalizeConfig,
    tokenizer: Any,
    texts: Sequence[str],
    out_dir: Path,
    training_args: Any,
) -> Path:
    """Train a masked LM on ``texts``; save it to ``out_dir`` (rank 0) and return the path.

    A finished run (marker file present) is reused: the caller wipes ``out_dir`` whenever the
    training fingerprint changes, so a marker here always belongs to the current inputs.
    """
    from transformers import DataCollatorForLanguageModeling, Trainer

    if (out_dir / DONE_MARKER).is_file():
        logger.info("reusing MLM-pretrained weights in %s", out_dir)
        return out_dir
    texts = list(texts)
    if cfg.mlm.extra_corpus is not None:
        texts += read_extra_corpus(cfg.mlm.extra_corpus, cfg.mlm.max_extra_lines, normalization)
    enc = tokenizer(texts, truncation=True, max_length=cfg.max_length, return_special_tokens_mask=True)
    dataset = EncodedDataset({k: list(v) for k, v in enc.items()})
    logger.info("MLM pretraining on %d texts for %s epochs", len(texts), cfg.mlm.epochs)
    collator = DataCollatorForLanguageModeling(
        tokenizer=tokenizer, mlm=True, mlm_probability=cfg.mlm.mask_probability
    )
    trainer = Trainer(
        model=build_masked_lm(cfg, tokenizer),
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(out_dir))
    if trainer.is_world_process_zero():
        (out_dir / DONE_MARKER).write_text("ok\n", encoding="utf-8")
    trainer.accelerator.wait_for_everyone()
    return out_dir

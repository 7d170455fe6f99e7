"""Fine-tune a sequence classifier with the HF ``Trainer``: dynamic padding, length-grouped batches,
early stopping on validation macro-F1, full-state checkpoints with fingerprint-checked resume, DDP
when launched by ``torchrun``. MLflow logging is a callback the caller passes in."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from textclf.config import Config, apply_overrides
from textclf.train.data import (
    LABEL,
    TEXT,
    check_columns,
    clean_texts,
    encode,
    resolve_labels,
    training_fingerprint,
)

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "textclf_fingerprint.json"
MLM_DIR = "mlm"
_TRAINER_STATE = "trainer_state.json"


class InjectedFault(RuntimeError):
    """Raised by the ``fault_after_steps`` test hook to simulate a crashed training process."""


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    global_step: int
    resumed_from_step: int  # 0 for a fresh start
    epochs_run: float
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, val_loss, val_accuracy, val_macro_f1
    best_metrics: dict[str, float]  # val metrics of the checkpoint that was kept
    wall_time_s: float
    train_samples_per_s: float  # samples processed by this call / its training time (all ranks)
    padding_efficiency: float  # real tokens / tokens processed incl. padding, over training batches
    tokens_processed: int
    device: str
    world_size: int
    is_main_process: bool
    labels: list[str]
    fingerprint: dict[str, str]
    config: Config = field(repr=False)


def effective_config(cfg: Config) -> Config:
    """``cfg`` with ``train.gpu_profile`` applied when CUDA is available."""
    import torch

    if torch.cuda.is_available() and cfg.train.gpu_profile:
        return apply_overrides(cfg, cfg.train.gpu_profile)
    return cfg


def training_arguments(cfg: Config, output_dir: Path, **overrides: Any) -> TrainingArguments:
    """TrainingArguments derived from ``cfg.train`` (bf16 on CUDA, fp32 on CPU)."""
    import torch

    t = cfg.train
    cuda = torch.cuda.is_available()
    lower_is_better = t.metric_for_best_model.endswith("loss")
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of total steps in transformers 5
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",  # plus every checkpoint_steps via _StepCheckpoints
        save_total_limit=t.save_total_limit,
        save_only_model=False,  # optimizer, scheduler and RNG state too: resume is exact
        load_best_model_at_end=True,
        metric_for_best_model=t.metric_for_best_model,
        greater_is_better=not lower_is_better,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        seed=t.seed,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        ddp_backend=None,  # accelerate picks nccl on GPU, gloo on CPU under torchrun
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


# --------------------------------------------------------------------------- callbacks
class _StepCheckpoints(TrainerCallback):
    """Full-state checkpoint every ``every`` optimizer steps, on top of the per-epoch ones
    (load_best_model_at_end forces save_strategy == eval_strategy == epoch)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.global_step % self.every == 0:
            control.should_save = True
        return control


class _LogAtEpochEnd(TrainerCallback):
    """Log the running train loss before each epoch's evaluation, so history has a per-epoch loss."""

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        control.should_log = True
        return control


class _FaultAfter(TrainerCallback):
    """Raise once ``steps`` optimizer steps are done (and any checkpoint at that step is written).

    A retry that passes the same hook faults again as soon as it reaches ``steps``; pass it on the
    first attempt only."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.global_step >= self.steps:
            raise InjectedFault(f"injected fault after {state.global_step} steps")
        return control


class CountingTrainer(Trainer):
    """Counts real vs padded tokens and samples of the batches actually trained on (this rank)."""

    real_tokens = 0
    padded_tokens = 0
    samples = 0

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        mask = inputs.get("attention_mask")
        if mask is not None:
            self.real_tokens += int(mask.sum())
            self.padded_tokens += int(mask.numel())
            self.samples += int(mask.shape[0])
        return super().training_step(model, inputs, num_items_in_batch)


# --------------------------------------------------------------------------- metrics / history
def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """Accuracy and macro-F1 (every class weighs the same, whatever its frequency)."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    preds = np.asarray(logits).argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", labels=np.arange(logits.shape[-1]))),
    }


def epoch_history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """One row per evaluation: the step-weighted mean train loss since the previous one, val metrics."""
    rows: list[dict[str, float]] = []
    loss_sum, loss_steps, last_step = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            steps = max(int(entry["step"]) - last_step, 1)
            loss_sum += float(entry["loss"]) * steps
            loss_steps += steps
            last_step = int(entry["step"])
        elif "eval_accuracy" in entry:
            rows.append(
                {
                    "epoch": float(entry.get("epoch", len(rows) + 1)),
                    "step": int(entry.get("step", 0)),
                    "train_loss": loss_sum / loss_steps if loss_steps else float("nan"),
                    "val_loss": float(entry.get("eval_loss", float("nan"))),
                    "val_accuracy": float(entry["eval_accuracy"]),
                    "val_macro_f1": float(entry.get("eval_macro_f1", float("nan"))),
                }
            )
            loss_sum, loss_steps = 0.0, 0
    return rows


# --------------------------------------------------------------------------- checkpoints
def _complete_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoints whose trainer state was written (a crash mid-save leaves it missing)."""
    found = []
    for path in checkpoint_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if path.is_dir() and step.isdigit() and (path / _TRAINER_STATE).is_file():
            found.append((int(step), path))
    return sorted(found)


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """Remove what this module writes into ``checkpoint_dir`` (and nothing else)."""
    for path in checkpoint_dir.glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(checkpoint_dir / MLM_DIR, ignore_errors=True)
    (checkpoint_dir / FINGERPRINT_FILE).unlink(missing_ok=True)


def prepare_checkpoint_dir(checkpoint_dir: Path, fingerprint: dict[str, str]) -> None:
    """Keep checkpoints only if they were made from the same data, config and code."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stored_path = checkpoint_dir / FINGERPRINT_FILE
    stored = json.loads(stored_path.read_text(encoding="utf-8")) if stored_path.is_file() else None
    if stored and stored.get("fingerprint") == fingerprint["fingerprint"]:
        return
    if stored or any(checkpoint_dir.glob("checkpoint-*")):
        old = stored or {}
        changed = sorted(k for k in fingerprint if k != "fingerprint" and old.get(k) != fingerprint[k])
        logger.info("checkpoints in %s are stale (changed: %s); starting fresh", checkpoint_dir, changed)
    clear_checkpoints(checkpoint_dir)
    stored_path.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def resume_point(checkpoint_dir: Path) -> tuple[Path | None, int]:
    """The latest complete checkpoint and its global step, or (None, 0)."""
    complete = _complete_checkpoints(checkpoint_dir)
    if not complete:
        return None, 0
    step, path = complete[-1]
    state = json.loads((path / _TRAINER_STATE).read_text(encoding="utf-8"))
    return path, int(state.get("global_step", step))


# --------------------------------------------------------------------------- entry
def train_model(
    cfg: Config,
    train: pd.DataFrame,
    val: pd.DataFrame,
    output_dir: Path,
    checkpoint_dir: Path,
    callbacks: Sequence[Any] = (),
    fault_after_steps: int | None = None,
) -> TrainResult:
    """Train on ``train`` (columns text, label), select on ``val``, save a model dir to ``output_dir``.

    Resumes from the latest checkpoint in ``checkpoint_dir`` when the fingerprint (data, effective
    config, code) matches; otherwise clears it. Under ``torchrun`` every rank calls this; only rank 0
    writes ``output_dir`` and ``TrainResult.is_main_process`` says which rank should log.
    ``fault_after_steps`` is a test hook that raises :class:`InjectedFault` mid-training.
    """
    import torch
    from accelerate import PartialState
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, set_seed

    from textclf.model.build import build_classifier, build_tokenizer
    from textclf.model.predictor import Preprocessing
    from textclf.train.mlm import pretrain_mlm

    start = time.perf_counter()
    cfg = effective_config(cfg)
    output_dir, checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
    check_columns(train, "train")
    check_columns(val, "val")
    labels = resolve_labels(cfg.data.labels, train, val)
    label2id = {lab: i for i, lab in enumerate(labels)}
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)

    args = training_arguments(cfg, checkpoint_dir)  # initializes the process group under torchrun
    dist = PartialState()
    fingerprint = training_fingerprint(cfg, train, val)
    if dist.is_main_process:
        prepare_checkpoint_dir(checkpoint_dir, fingerprint)
    dist.wait_for_everyone()
    resume_from, resumed_step = resume_point(checkpoint_dir)
    if resume_from is not None:
        logger.info("resuming from %s (step %d)", resume_from, resumed_step)

    train_texts = clean_texts(train[TEXT].tolist(), cfg.prepare.normalize)
    val_texts = clean_texts(val[TEXT].tolist(), cfg.prepare.normalize)
    tokenizer = build_tokenizer(cfg.model, train_texts)

    init_from = None
    if cfg.model.mlm.enabled and resume_from is None:
        mlm = cfg.model.mlm
        mlm_args = training_arguments(
            cfg,
            checkpoint_dir / MLM_DIR / "run",
            num_train_epochs=mlm.epochs,
            learning_rate=mlm.learning_rate,
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            metric_for_best_model=None,
        )
        init_from = pretrain_mlm(cfg, tokenizer, train_texts, checkpoint_dir / MLM_DIR, mlm_args)
        set_seed(cfg.train.seed)
    model = build_classifier(cfg.model, tokenizer, labels, init_from=init_from)

    max_len = cfg.model.max_length
    train_ids = [label2id[str(v)] for v in train[LABEL]]
    val_ids = [label2id[str(v)] for v in val[LABEL]]
    train_ds = encode(tokenizer, train_texts, train_ids, max_len)
    val_ds = encode(tokenizer, val_texts, val_ids, max_len, sort_by_length=True)

    extra = [_StepCheckpoints(cfg.train.checkpoint_steps), _LogAtEpochEnd()]
    if cfg.train.early_stopping_patience > 0:
        extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    if fault_after_steps is not None:
        extra.append(_FaultAfter(fault_after_steps))
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[*extra, *callbacks],
    )
    train_start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_time = time.perf_counter() - train_start

    trainer.save_model(str(output_dir))  # rank 0 only; weights of the best epoch
    if trainer.is_world_process_zero():
        Preprocessing(normalize=cfg.prepare.normalize, max_length=max_len).save(output_dir)
        # A pickle of TrainingArguments holding absolute paths: serving does not need it, and it
        # would make the model directory's DVC hash differ between checkouts of the same training.
        (output_dir / "training_args.bin").unlink(missing_ok=True)
    dist.wait_for_everyone()

    state = trainer.state
    history = epoch_history(state.log_history)
    best = next((h for h in history if h["step"] == state.best_global_step), history[-1] if history else {})
    world = args.world_size
    return TrainResult(
        model_dir=output_dir,
        global_step=int(state.global_step),
        resumed_from_step=resumed_step,
        epochs_run=float(state.epoch or 0.0),
        history=history,
        best_metrics={k: v for k, v in best.items() if k.startswith("val_") or k == "epoch"},
        wall_time_s=time.perf_counter() - start,
        train_samples_per_s=trainer.samples * world / train_time if train_time > 0 else 0.0,
        padding_efficiency=trainer.real_tokens / trainer.padded_tokens if trainer.padded_tokens else 1.0,
        tokens_processed=trainer.padded_tokens * world,
        device=str(args.device),
        world_size=world,
        is_main_process=trainer.is_world_process_zero(),
        labels=labels,
        fingerprint=fingerprint,
        config=cfg,
    )

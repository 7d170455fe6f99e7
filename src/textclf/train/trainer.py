"""Fine-tune a sequence classifier with the HF ``Trainer``: dynamic padding, length-grouped batches,
early stopping on validation macro-F1, full-state checkpoints with fingerprint-checked resume, DDP
when launched by ``torchrun``. What to log and where is the caller's business (``callbacks``)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from textclf import contracts as C
from textclf.config import Config, apply_overrides
from textclf.data.normalize import normalize
from textclf.evaluate import metrics as M
from textclf.model.base_model import carry_provenance
from textclf.model.build import build_classifier, build_tokenizer, local_pretrained
from textclf.model.predictor import Preprocessing
from textclf.train.data import encode, resolve_labels
from textclf.train.mlm import pretrain_mlm

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "textclf_fingerprint.json"
MLM_DIR = "mlm"
BASE_DIR = "base"  # the pretrained model fitted to the train split (model.vocab: train)
_TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True)
class TrainResult:
    global_step: int
    resumed_from_step: int  # 0 for a fresh start
    history: list[
        dict[str, float]
    ]  # per epoch: epoch, step, train_loss, val_loss, val_accuracy, val_macro_f1
    best: dict[str, float]  # the kept epoch's row of history
    wall_time_s: float
    train_samples_per_s: float  # samples trained on by this call / its training time (all ranks)
    padding_efficiency: float  # real tokens / tokens processed incl. padding
    device: str
    world_size: int
    is_main_process: bool
    labels: list[str]


def effective_config(cfg: Config) -> Config:
    """``cfg`` with ``train.gpu_profile`` applied when CUDA is available: what training really uses."""
    import torch

    if torch.cuda.is_available() and cfg.train.gpu_profile:
        return apply_overrides(cfg, cfg.train.gpu_profile)
    return cfg


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively: a CUDA GPU that supports it, else a CPU with AMX or
    AVX512-BF16 (what torch's own CPU dispatch asks; elsewhere bf16 is emulated and slower than fp32)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    cpu = torch.cpu
    return any(
        getattr(cpu, f, lambda: False)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )


def training_arguments(cfg: Config, output_dir: Path, **overrides: Any) -> TrainingArguments:
    """TrainingArguments derived from ``cfg.train``: bf16 autocast where :func:`native_bf16` (GPU or CPU)
    unless ``train.precision: fp32``."""
    import torch

    t = cfg.train
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of total steps in transformers 5
        eval_strategy="epoch",
        save_strategy="epoch",  # plus every checkpoint_steps via _StepCheckpoints
        save_total_limit=t.save_total_limit,
        save_only_model=False,  # optimizer, scheduler and RNG state too: resume is exact
        load_best_model_at_end=True,
        metric_for_best_model=t.metric_for_best_model,
        greater_is_better=not t.metric_for_best_model.endswith("loss"),
        logging_steps=t.logging_steps,
        seed=t.seed,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        bf16=t.precision == "auto" and native_bf16(),
        use_cpu=not cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",  # the caller's callbacks log (textclf.tracking.run.StepMetrics)
        disable_tqdm=True,  # log lines, not progress bars
    )
    return TrainingArguments(**{**kwargs, **overrides})


class _StepCheckpoints(TrainerCallback):
    """A full-state checkpoint every ``every`` optimizer steps, on top of the per-epoch ones, and a
    train-loss log line at each epoch end so that history has a per-epoch loss."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(
        self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> TrainerControl:
        control.should_save = control.should_save or state.global_step % self.every == 0
        return control

    def on_epoch_end(
        self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> TrainerControl:
        control.should_log = True
        return control


class ShuffledLengthGroups:
    """Length-grouped batches in random order (a torch ``Sampler`` of indices).

    Each epoch: permute the examples, sort chunks of ``batch_size * 50`` by length, cut them into batches,
    shuffle the batches (a short last batch goes last, so the DataLoader's batches stay the groups).
    HF's ``LengthGroupedSampler`` leaves each chunk's batches in descending length order, a long-to-short
    sweep every 50 batches whose consecutive batches share their length (and so, in reviews, their
    class mix). Shuffling the groups, as the reference loop does, gave +0.5 val macro-F1 on the bundled
    corpus, seed 0 (docs/tuning.md round 6). Deterministic in (seed, epoch): a resumed run skips the same
    batches. The 50 mirrors HF's chunk size.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, chunk_batches: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.chunk = list(lengths), batch_size, seed, chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        rng = np.random.default_rng([self.seed, self.epoch])
        order, size, bs = rng.permutation(len(self.lengths)), self.batch_size * self.chunk, self.batch_size
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size].tolist(), key=self.lengths.__getitem__)
            batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
        full = [b for b in batches if len(b) == bs]
        ordered = [full[i] for i in rng.permutation(len(full))] + [b for b in batches if len(b) < bs]
        return iter([i for b in ordered for i in b])


class CountingTrainer(Trainer):
    """Counts real vs padded tokens and samples of the batches actually trained on (this rank); with
    ``train.group_by_length`` its batches come from :class:`ShuffledLengthGroups`."""

    real_tokens = padded_tokens = samples = 0

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = [len(ids) for ids in dataset.encodings["input_ids"]]
        return ShuffledLengthGroups(lengths, self.args.per_device_train_batch_size, self.args.seed)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        mask = inputs["attention_mask"]
        self.real_tokens += int(mask.sum())
        self.padded_tokens += int(mask.numel())
        self.samples += int(mask.shape[0])
        return super().training_step(model, inputs, num_items_in_batch)


def class_weights(y: Sequence[int], n_labels: int, above: float | None) -> np.ndarray | None:
    """Inverse-frequency weights (mean 1 over the examples) when the classes are skewed beyond ``above``."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_labels)
    if above is None or counts.min() == 0 or counts.max() / counts.min() <= above:
        return None
    return counts.sum() / (n_labels * counts)


def weighted_loss(weights: np.ndarray, labels: Sequence[str]) -> Any:
    """A Trainer ``compute_loss_func``: class-weighted cross-entropy, summed over the examples and divided
    by the batch's item count (what gradient accumulation expects)."""
    import torch

    logger.info(
        "skewed classes: class-weighted loss %s", dict(zip(labels, weights.round(3).tolist(), strict=True))
    )
    w = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"].float()
        per_item = torch.nn.functional.cross_entropy(
            logits, labels, weight=w.to(logits.device), reduction="none"
        )
        return per_item.sum() / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

    return loss


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """Validation accuracy and macro-F1, by :mod:`textclf.evaluate.metrics` (the gate's convention)."""
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    preds = np.asarray(logits).argmax(axis=-1)
    y = eval_pred.label_ids
    return {"accuracy": M.accuracy(y, preds), "macro_f1": M.macro_f1(y, preds, logits.shape[-1])}


def epoch_history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """One row per evaluation: the step-weighted mean train loss since the previous one, val metrics."""
    rows: list[dict[str, float]] = []
    loss_sum, loss_steps, last_step = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            steps = max(int(entry["step"]) - last_step, 1)
            loss_sum, loss_steps, last_step = (
                loss_sum + float(entry["loss"]) * steps,
                loss_steps + steps,
                int(entry["step"]),
            )
        elif "eval_accuracy" in entry:
            rows.append(
                {
                    "epoch": float(entry["epoch"]),
                    "step": int(entry["step"]),
                    "train_loss": loss_sum / loss_steps if loss_steps else float("nan"),
                    "val_loss": float(entry["eval_loss"]),
                    "val_accuracy": float(entry["eval_accuracy"]),
                    "val_macro_f1": float(entry["eval_macro_f1"]),
                }
            )
            loss_sum, loss_steps = 0.0, 0
    return rows


# --------------------------------------------------------------------------- checkpoints
def prepare_checkpoint_dir(checkpoint_dir: Path, fingerprint: str) -> bool:
    """Keep the checkpoints (and run id) only if made from the same data, config and code; True if kept."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stored = checkpoint_dir / FINGERPRINT_FILE
    if stored.is_file() and json.loads(stored.read_text())["fingerprint"] == fingerprint:
        return True
    if any(checkpoint_dir.iterdir()):
        logger.info("checkpoints in %s belong to other data, params or code: starting fresh", checkpoint_dir)
    for path in checkpoint_dir.glob("checkpoint-*"):
        shutil.rmtree(path)
    shutil.rmtree(checkpoint_dir / MLM_DIR, ignore_errors=True)
    shutil.rmtree(checkpoint_dir / BASE_DIR, ignore_errors=True)
    (checkpoint_dir / C.RUN_ID_FILE).unlink(missing_ok=True)
    stored.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    return False


def resume_point(checkpoint_dir: Path) -> tuple[Path | None, int]:
    """The latest complete checkpoint (its trainer state was written) and its global step, or (None, 0)."""
    complete = sorted(
        (int(p.name.removeprefix("checkpoint-")), p)
        for p in checkpoint_dir.glob("checkpoint-*")
        if (p / _TRAINER_STATE).is_file()
    )
    return complete[-1][::-1] if complete else (None, 0)


# --------------------------------------------------------------------------- entry
def _trainer(
    cfg: Config,
    train: pd.DataFrame,
    val: pd.DataFrame,
    labels: list[str],
    args: TrainingArguments,
    resuming: bool,
    callbacks: Sequence[Any],
) -> CountingTrainer:
    """Tokenizer (from the train texts), model (after optional MLM pretraining, skipped when resuming),
    datasets and callbacks, assembled into the Trainer."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, set_seed
    from transformers.trainer_callback import PrinterCallback

    val = val.assign(n=val["text"].str.len()).sort_values("n", kind="stable")  # less padding in eval batches
    texts = {
        k: [normalize(t, cfg.prepare.normalize) for t in f["text"]]
        for k, f in (("train", train), ("val", val))
    }
    tokenizer = build_tokenizer(cfg.model, texts["train"])
    init_from = None
    if cfg.model.mlm.enabled and not resuming:
        mlm, ckpt = cfg.model.mlm, Path(args.output_dir) / MLM_DIR
        mlm_args = training_arguments(
            cfg,
            ckpt / "run",
            num_train_epochs=mlm.epochs,
            learning_rate=mlm.learning_rate,
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            metric_for_best_model=None,
        )
        init_from = pretrain_mlm(cfg.model, cfg.prepare.normalize, tokenizer, texts["train"], ckpt, mlm_args)
        set_seed(cfg.train.seed)
    ids = {lab: i for i, lab in enumerate(labels)}
    y_train = [ids[v] for v in train["label"]]
    weights = class_weights(y_train, len(labels), cfg.train.class_weights_above)
    extra: list[Any] = [_StepCheckpoints(cfg.train.checkpoint_steps)]
    if cfg.train.early_stopping_patience > 0:
        extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = CountingTrainer(
        model=build_classifier(cfg.model, tokenizer, labels, init_from=init_from),
        args=args,
        train_dataset=encode(tokenizer, texts["train"], y_train, cfg.model.max_length),
        eval_dataset=encode(tokenizer, texts["val"], [ids[v] for v in val["label"]], cfg.model.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        compute_loss_func=weighted_loss(weights, labels) if weights is not None else None,
        callbacks=[*extra, *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # log dicts printed raw; the callers' callbacks log them
    return trainer


def train_model(
    cfg: Config,
    train: pd.DataFrame,
    val: pd.DataFrame,
    output_dir: Path,
    checkpoint_dir: Path,
    callbacks: Sequence[Any] = (),
    base_models: Path | None = None,
) -> TrainResult:
    """Train on ``train`` (columns text, label), select on ``val``, save a model directory to ``output_dir``.

    Resumes from the latest complete checkpoint in ``checkpoint_dir`` (the caller clears stale ones with
    :func:`prepare_checkpoint_dir`). Under ``torchrun`` every rank calls this; rank 0 alone writes.
    A ``pip:`` model source is converted into ``base_models`` (default ``paths.base_models``) first; its
    provenance.json and model card are copied into ``output_dir``.
    """
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    start = time.perf_counter()
    labels = resolve_labels(cfg.data.labels, train, val)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    args = training_arguments(cfg, checkpoint_dir)  # initializes the process group under torchrun
    dist = PartialState()
    dist.wait_for_everyone()  # rank 0 has prepared the checkpoint folder
    resume_from, resumed_step = resume_point(checkpoint_dir)
    with dist.main_process_first():  # rank 0 fetches and converts, the others then find it done
        fit_texts = (
            [normalize(t, cfg.prepare.normalize) for t in train["text"]] if cfg.model.vocab == "train" else []
        )
        model_cfg, base_dir = local_pretrained(
            cfg.model, base_models or cfg.paths.base_models, fit_texts, checkpoint_dir / BASE_DIR
        )
    cfg = cfg.model_copy(update={"model": model_cfg})
    if resume_from is not None:
        logger.info("resuming from %s (step %d)", resume_from, resumed_step)
    trainer = _trainer(cfg, train, val, labels, args, resume_from is not None, callbacks)
    train_start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_time = time.perf_counter() - train_start
    trainer.save_model(str(output_dir))  # rank 0 only; the best epoch's weights
    if trainer.is_world_process_zero():
        Preprocessing(normalize=cfg.prepare.normalize, max_length=cfg.model.max_length).save(output_dir)
        if base_dir is not None:
            carry_provenance(base_dir, output_dir)
        # A pickle holding absolute paths: serving does not need it, and it would make the model
        # directory's DVC hash differ between checkouts of the same training.
        (output_dir / "training_args.bin").unlink(missing_ok=True)
    dist.wait_for_everyone()
    history = epoch_history(trainer.state.log_history)
    best = next(
        (h for h in history if h["step"] == trainer.state.best_global_step), history[-1] if history else {}
    )
    return TrainResult(
        global_step=int(trainer.state.global_step),
        resumed_from_step=resumed_step,
        history=history,
        best=best,
        wall_time_s=time.perf_counter() - start,
        train_samples_per_s=trainer.samples * args.world_size / train_time if train_time > 0 else 0.0,
        padding_efficiency=trainer.real_tokens / trainer.padded_tokens if trainer.padded_tokens else 1.0,
        device=str(args.device),
        world_size=args.world_size,
        is_main_process=trainer.is_world_process_zero(),
        labels=labels,
    )

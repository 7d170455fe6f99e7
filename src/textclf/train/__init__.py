"""Training: tokenizer/model building, HF Trainer fine-tuning with resume, DDP and MLM pretraining."""

from textclf.train.trainer import InjectedFault, TrainResult, effective_config, train_model

__all__ = ["InjectedFault", "TrainResult", "effective_config", "train_model"]

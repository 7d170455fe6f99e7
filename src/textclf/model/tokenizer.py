"""Character-level tokenizer built from the training split, saved as a standard HF tokenizer.

Every non-space character is one token (Chinese needs no word segmentation, other scripts still
work). The vocabulary is counted here, deterministically, so every DDP rank and every resumed run
builds the identical tokenizer from the same data.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from textclf.config import TokenizerConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)


def char_vocab(texts: Iterable[str], cfg: TokenizerConfig) -> dict[str, int]:
    """Special tokens first, then characters seen >= min_frequency, most frequent first."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(ch for ch in text if not ch.isspace())
    kept = [(ch, n) for ch, n in counts.items() if n >= cfg.min_frequency and ch not in SPECIAL_TOKENS]
    # Ties broken by the character itself: the order (hence the ids) never depends on input order.
    kept.sort(key=lambda item: (-item[1], item[0]))
    chars = [ch for ch, _ in kept[: max(cfg.vocab_size - len(SPECIAL_TOKENS), 0)]]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(chars)})
    logger.info("char vocabulary: %d tokens (%d distinct chars seen)", len(vocab), len(counts))
    return vocab


def build_char_tokenizer(
    texts: Iterable[str], cfg: TokenizerConfig, max_length: int
) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` over a char vocabulary from ``texts`` (the TRAIN split only)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = char_vocab(texts, cfg)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Drop whitespace, then isolate every remaining character as its own token.
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    core.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_max_length=max_length,
        padding_side="right",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )

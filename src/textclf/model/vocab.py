"""Fitting a converted base model to the task: the vocabulary the train texts use."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from textclf.errors import ModelSourceError
from textclf.model.base_model import read_provenance, write_provenance
from textclf.model.formats import unigram_tokenizer

logger = logging.getLogger(__name__)


def fit_to_texts(base_dir: Path, texts: Sequence[str], out_dir: Path) -> Path:
    """A copy of ``base_dir`` keeping the vocabulary pieces ``texts`` use, every single-character piece
    and the specials, in their old order; embedding rows follow. A text whose pieces are all kept gets
    the same pieces (renumbered), hence the same outputs. Reused if ``out_dir`` holds the same fitting.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    base = read_provenance(base_dir)
    fitted = {"vocab": "train", "texts_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest()}
    done = read_provenance(out_dir)
    same_texts = done.get("fitted", {}).get("texts_sha256") == fitted["texts_sha256"]
    if same_texts and done.get("wheel_sha256") == base.get("wheel_sha256"):
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "Unigram":
        raise ModelSourceError(f"{base_dir}: model.vocab=train needs a Unigram tokenizer")
    vocab = [(p, s) for p, s in state["model"]["vocab"]]
    used = {i for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in ids}
    singles = {i for i, (p, _) in enumerate(vocab) if len(p) == 1}
    keep = sorted(used | singles | set(tokenizer.all_special_ids))
    new_id = {old: new for new, old in enumerate(keep)}
    specials = {k: new_id[getattr(tokenizer, f"{k}_token_id")] for k in ("bos", "eos", "pad", "unk")}
    model = AutoModel.from_pretrained(str(base_dir), add_pooling_layer=False)
    rows = model.get_input_embeddings().weight.detach()[torch.tensor(keep)]
    model.set_input_embeddings(
        torch.nn.Embedding.from_pretrained(rows, freeze=False, padding_idx=specials["pad"])
    )
    model.config.vocab_size = len(keep)
    model.config.update({f"{k}_token_id": specials[k] for k in ("bos", "eos", "pad")})
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)
    normalizer = tokenizer.backend_tokenizer.normalizer
    pruned = unigram_tokenizer([vocab[i] for i in keep], specials, normalizer, tokenizer.model_max_length)
    pruned.save_pretrained(out_dir)
    logger.info("fitted %s to the train texts: %d of %d pieces kept", base_dir, len(keep), len(vocab))
    write_provenance(out_dir, base | {"fitted": fitted | {"pieces": len(keep), "of": len(vocab)}})
    return out_dir

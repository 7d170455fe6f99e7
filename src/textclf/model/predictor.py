"""Load a saved model directory and predict raw text.

A model directory is a standard Hugging Face directory (safetensors weights, config.json with
``id2label``/``label2id``, tokenizer files) plus ``textclf_preprocessing.json``: the normalization
settings and max length used in training. Serving, evaluation and the MLflow pyfunc all go through
:class:`Predictor`, so preprocessing exists in one place only.

The forward pass runs on one of :data:`RUNTIMES`: the fp32 torch model, the same in bf16 (weights cast at
load, bf16 autocast: what AMX / AVX512-BF16 CPUs compute natively), torch dynamic int8 quantization
of its Linear layers (done at load), or ONNX Runtime on an exported graph (``model.onnx``,
``model.int8.onnx``; see :mod:`textclf.evaluate.variants`). A model directory prepared for serving names
its runtime in ``textclf_runtime.json``; without it the runtime is torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import textclf.model.pooling  # noqa: F401  (registers model.pooling: mean's type with the Auto classes)
from textclf.config import NormalizeConfig
from textclf.data.normalize import normalize
from textclf.errors import ModelSourceError
from textclf.model.blend import load_blend

PREPROCESSING_FILE = "textclf_preprocessing.json"
RUNTIME_FILE = "textclf_runtime.json"  # {"runtime": ..., "parity": {...}}: what a served directory runs
RUNTIMES = ("torch", "bf16", "int8", "onnx", "onnx-int8")
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}


@dataclass(frozen=True)
class Preprocessing:
    normalize: NormalizeConfig
    max_length: int

    def to_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize.model_dump(), "max_length": self.max_length}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        return cls(normalize=NormalizeConfig(**raw["normalize"]), max_length=int(raw["max_length"]))

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / PREPROCESSING_FILE).write_text(
            json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, model_dir: Path) -> Preprocessing:
        path = Path(model_dir) / PREPROCESSING_FILE
        if not path.is_file():
            raise ModelSourceError(
                f"{model_dir} is not a textclf model directory: {PREPROCESSING_FILE} missing"
            )
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    truncated: bool


class Predictor:
    """Normalize → tokenize (truncate to max_length) → forward on the runtime → softmax → mixed with
    the n-gram part when the directory holds a blend (textclf.model.blend).

    ``runtime`` defaults to the one ``textclf_runtime.json`` names (torch without it); ONNX files are
    read from ``onnx_dir`` (default: the model directory). ``threads`` caps ONNX Runtime's intra-op
    threads (torch's are process-wide: ``torch.set_num_threads``).
    """

    def __init__(
        self,
        model_dir: Path | str,
        device: str | None = None,
        runtime: str | None = None,
        onnx_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelSourceError(f"model directory not found: {model_dir}")
        self.model_dir = model_dir

        self.preprocessing = Preprocessing.load(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        served = model_dir / RUNTIME_FILE
        self.serving: dict[str, Any] = (
            json.loads(served.read_text(encoding="utf-8")) if served.is_file() else {}
        )
        self.runtime = runtime or self.serving.get("runtime", "torch")
        if self.runtime not in RUNTIMES:
            raise ModelSourceError(f"unknown runtime {self.runtime!r}; one of {list(RUNTIMES)}")
        gpu = self.runtime == "torch" and torch.cuda.is_available()
        self.device = torch.device(device or ("cuda" if gpu else "cpu"))
        id2label = AutoConfig.from_pretrained(model_dir).id2label
        self.labels: list[str] = [id2label[i] for i in range(len(id2label))]
        self.blend = load_blend(model_dir, self.labels)  # None: the encoder alone (model.family encoder)
        self.model: Any = None
        self.session: Any = None
        if self.runtime in ONNX_FILES:
            self.session = _onnx_session(Path(onnx_dir or model_dir) / ONNX_FILES[self.runtime], threads)
        else:
            self.model = _torch_model(model_dir, self.runtime).to(self.device)

    @property
    def max_length(self) -> int:
        return self.preprocessing.max_length

    def normalize(self, texts: list[str]) -> list[str]:
        return [normalize(t, self.preprocessing.normalize) for t in texts]

    def predict_proba(
        self, texts: list[str], batch_size: int | None = None, *, normalized: bool = False
    ) -> tuple[np.ndarray, list[bool]]:
        """Probabilities (n, n_labels) in ``self.labels`` order and a per-text truncation flag, computed
        ``batch_size`` texts at a time (None: all in one batch; callers pass train.eval_batch_size or
        serve.max_batch_size). ``normalized``: the texts already went through :meth:`normalize`."""
        import torch

        clean = list(texts) if normalized else self.normalize(list(texts))
        probs: list[np.ndarray] = []
        truncated: list[bool] = []
        step = batch_size or max(len(clean), 1)
        for start in range(0, len(clean), step):
            enc, cut = self._encode(clean[start : start + step])
            truncated.extend(cut)
            probs.append(torch.softmax(self._logits(enc).float(), dim=-1).cpu().numpy())
        if not probs:
            return np.zeros((0, len(self.labels)), dtype=np.float32), []
        out = np.concatenate(probs)
        return (out if self.blend is None else self.blend.mix(out, clean)), truncated

    def _encode(self, chunk: list[str]) -> tuple[dict[str, np.ndarray], list[bool]]:
        """One tokenizer call: ids cut to ``max_length``, and which texts were cut (they overflowed)."""
        enc = self.tokenizer(
            chunk,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_overflowing_tokens=True,
            return_tensors="np",
        )
        rows = enc.pop("overflow_to_sample_mapping")
        first = np.unique(rows, return_index=True)[1]  # each text's first window is what the model reads
        cut = np.bincount(rows, minlength=len(chunk)) > 1
        return {k: v[first] for k, v in enc.items()}, [bool(c) for c in cut]

    def _logits(self, enc: dict[str, np.ndarray]) -> Any:
        import torch

        if self.session is None:
            bf16 = self.runtime == "bf16"
            with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16, enabled=bf16):
                return self.model(**{k: torch.from_numpy(v).to(self.device) for k, v in enc.items()}).logits
        feed = {i.name: enc[i.name].astype(np.int64) for i in self.session.get_inputs()}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def predict(
        self, texts: list[str], batch_size: int | None = None, *, normalized: bool = False
    ) -> list[Prediction]:
        probs, truncated = self.predict_proba(texts, batch_size, normalized=normalized)
        out = []
        for row, trunc in zip(probs, truncated, strict=True):
            out.append(
                Prediction(
                    label=self.labels[int(row.argmax())],
                    probabilities={lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
                    truncated=trunc,
                )
            )
        return out


def _torch_model(model_dir: Path, runtime: str) -> Any:
    import warnings

    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    if runtime == "bf16":
        return model.to(torch.bfloat16)
    if runtime != "int8":
        return model
    with warnings.catch_warnings():  # eager-mode quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _onnx_session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        raise ModelSourceError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

"""The encoder family: a Hugging Face sequence classifier (BERT / XLM-R / e5) and its tokenizer.

Its directory is a standard Hugging Face directory (safetensors weights, ``config.json`` with
``id2label``, tokenizer files), trained by :func:`textclf.train.trainer.train_model`. The forward pass
runs on one of :data:`RUNTIMES`: the fp32 torch model, the same in bf16 (weights cast at load, bf16
autocast: what AMX / AVX512-BF16 CPUs compute natively), torch dynamic int8 quantization of its Linear
layers (done at load), or ONNX Runtime on an exported graph (``model.onnx``, ``model.int8.onnx``; see
:mod:`textclf.evaluate.variants`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import textclf.model.pooling  # noqa: F401  (registers model.pooling: mean's type with the Auto classes)
from textclf.errors import ModelSourceError

RUNTIMES = ("torch", "bf16", "int8", "onnx", "onnx-int8")  # torch: fp32, the reference
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
CONFIG_FILE = "config.json"  # what makes a directory an encoder's


class Encoder:
    """Tokenize (truncate to ``max_length``) → forward on the runtime → softmax. ONNX files are read
    from ``onnx_dir`` (default: the model directory); ``threads`` caps ONNX Runtime's intra-op threads
    (torch's are process-wide: ``torch.set_num_threads``)."""

    name = "encoder"
    variants = RUNTIMES[1:]  # the runtimes textclf.evaluate.variants can make of it

    def __init__(
        self,
        model_dir: Path,
        max_length: int,
        runtime: str = "torch",
        device: str | None = None,
        onnx_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        if runtime not in RUNTIMES:
            raise ModelSourceError(f"unknown runtime {runtime!r}; one of {list(RUNTIMES)}")
        self.runtime, self.max_length = runtime, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        gpu = runtime == "torch" and torch.cuda.is_available()
        self.device = torch.device(device or ("cuda" if gpu else "cpu"))
        id2label = AutoConfig.from_pretrained(model_dir).id2label
        self.labels: list[str] = [id2label[i] for i in range(len(id2label))]
        self.model: Any = None
        self.session: Any = None
        if runtime in ONNX_FILES:
            self.session = _onnx_session(Path(onnx_dir or model_dir) / ONNX_FILES[runtime], threads)
        else:
            self.model = _torch_model(model_dir, runtime).to(self.device)

    @staticmethod
    def describe() -> str:
        return "encoder (a fine-tuned transformer)"

    def forward(self, clean: list[str], batch_size: int | None) -> tuple[np.ndarray, list[bool]]:
        import torch

        probs: list[np.ndarray] = []
        truncated: list[bool] = []
        step = batch_size or max(len(clean), 1)
        for start in range(0, len(clean), step):
            enc, cut = self._encode(clean[start : start + step])
            truncated.extend(cut)
            probs.append(torch.softmax(self._logits(enc).float(), dim=-1).cpu().numpy())
        if not probs:
            return np.zeros((0, len(self.labels)), dtype=np.float32), []
        return np.concatenate(probs), truncated

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

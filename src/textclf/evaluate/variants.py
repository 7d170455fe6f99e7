"""Compressed variants of a trained model and the parity gate that decides which of them may be served.

The evaluate stage scores every variant in ``evaluate.variants.names`` on the test split next to the
fp32 torch model: accuracy, macro-F1, agreement (share of predictions equal to fp32's), single-text p95
latency on one thread, weight size, and speedup (fp32 p95 / variant p95, same run). Files it writes to
``<paths.evaluation>/variants``::

    model.onnx         the fp32 graph (dynamic batch and length), run by ONNX Runtime
    model.int8.onnx    the same after ONNX Runtime's dynamic int8 quantization
    parity.json        every variant's figures, whether it passed and why not

``bf16`` and ``int8`` need no file: torch casts the weights to bf16, or quantizes the Linear layers
dynamically, when it loads the fp32 weights.
``serve.runtime`` picks what the Bento runs (:func:`resolve_runtime`).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import textclf.model.pooling  # noqa: F401  (registers model.pooling: mean's type with the Auto classes)
from textclf import contracts as C
from textclf.config import VariantsConfig
from textclf.errors import ModelSourceError
from textclf.evaluate import metrics as M
from textclf.model.encoder import ONNX_FILES
from textclf.model.predictor import Predictor

log = logging.getLogger(__name__)


def export_onnx(model_dir: Path, out_dir: Path, int8: bool = True) -> None:
    """``model.onnx`` (batch and sequence axes dynamic) and, with ``int8``, its dynamically quantized
    ``model.int8.onnx``."""
    import warnings

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = AutoTokenizer.from_pretrained(model_dir)(["示例文本", "例"], padding=True, return_tensors="pt")
    # The exporter binds input_names in the order of forward()'s parameters, not the dict's.
    names = [n for n in inspect.signature(model.forward).parameters if n in enc]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (),
            str(out_dir / ONNX_FILES["onnx"]),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            kwargs={n: enc[n] for n in names},
            dynamo=False,
        )
    if not int8:
        return
    logging.disable(logging.WARNING)  # ORT logs every skipped MatMul, and pre-processing advice, to root
    try:
        quantize_dynamic(
            out_dir / ONNX_FILES["onnx"], out_dir / ONNX_FILES["onnx-int8"], weight_type=QuantType.QInt8
        )
    finally:
        logging.disable(logging.NOTSET)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_p95_ms(predict: Callable[[list[str]], object], texts: Sequence[str], warmup: int) -> float:
    """p95 of single-text ``predict([text])`` wall times, in milliseconds."""
    for t in texts[:warmup]:
        predict([t])
    times = []
    for t in texts:
        start = time.perf_counter()
        predict([t])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 95))


def weights_mb(predictor: Predictor, onnx_dir: Path) -> float:
    """Size of what the runtime holds as weights: the ONNX file, or the torch state dict as saved."""
    import io

    import torch

    if predictor.runtime in ONNX_FILES:
        return (onnx_dir / ONNX_FILES[predictor.runtime]).stat().st_size / 2**20
    assert predictor.encoder is not None  # only an encoder (alone or in a blend) has variants
    buffer = io.BytesIO()
    torch.save(predictor.encoder.model.state_dict(), buffer)
    return buffer.tell() / 2**20


def parity_problems(
    fp32: Mapping[str, float], variant: Mapping[str, float], cfg: VariantsConfig
) -> list[str]:
    """Why ``variant`` may not replace ``fp32`` (empty: it passes)."""
    problems = []
    if variant["agreement"] < cfg.min_agreement:
        problems.append(f"agreement {variant['agreement']:.4f} < {cfg.min_agreement}")
    for key in ("accuracy", "macro_f1"):
        if abs(variant[key] - fp32[key]) > cfg.max_metric_delta:
            problems.append(
                f"{key} {variant[key]:.4f} is more than {cfg.max_metric_delta} from fp32 {fp32[key]:.4f}"
            )
    if variant["speedup"] <= 1.0:
        problems.append(f"not faster than fp32 (speedup {variant['speedup']:.2f})")
    return problems


def score_variants(
    cfg: VariantsConfig,
    model_dir: Path,
    out_dir: Path,
    texts: Sequence[str],
    gold: Sequence[str],
    batch_size: int,
    fp32_proba: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Every variant's figures on the test texts next to fp32's (row ``torch``; ``fp32_proba``: its
    probabilities on ``texts`` when the caller has them already); writes ``parity.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(name in ONNX_FILES for name in cfg.names):
        export_onnx(model_dir, out_dir, int8="onnx-int8" in cfg.names)
    texts, timed = list(texts), list(texts[: cfg.latency_texts])
    rows: dict[str, dict[str, Any]] = {}
    fp32_pred: np.ndarray | None = None
    for name in ("torch", *cfg.names):
        with torch_threads(1):
            predictor = Predictor(model_dir, device="cpu", runtime=name, onnx_dir=out_dir, threads=1)
            p95 = latency_p95_ms(predictor.predict_proba, timed, cfg.latency_warmup)
        if name != "torch" or fp32_proba is None:
            proba, _ = predictor.predict_proba(texts, batch_size=batch_size)
        else:
            proba = fp32_proba
        labels = predictor.labels
        y, pred = M.encode_labels(list(gold), labels), proba.argmax(axis=1)
        fp32_pred = pred if fp32_pred is None else fp32_pred
        row: dict[str, Any] = {
            "accuracy": M.accuracy(y, pred),
            "macro_f1": M.macro_f1(y, pred, len(labels)),
            "agreement": float(np.mean(pred == fp32_pred)),
            "p95_ms": p95,
            "size_mb": weights_mb(predictor, out_dir),
            "speedup": rows["torch"]["p95_ms"] / p95 if rows else 1.0,
        }
        row["problems"] = parity_problems(rows["torch"], row, cfg) if rows else []
        row["passed"] = not row["problems"]
        rows[name] = row
        log.info(
            "variant %s: %s",
            name,
            {k: v for k, v in row.items() if k != "problems"} | {"problems": row["problems"]},
        )
    return write_parity(rows, out_dir)


def write_parity(rows: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, dict[str, Any]]:
    """``parity.json`` in ``out_dir`` (the evaluate stage's output, also when no variant was made)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / C.PARITY_FILE).write_text(
        json.dumps({"variants": rows}, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return rows


def resolve_runtime(
    requested: str, variants: Mapping[str, Mapping[str, Any]], reference: str = "torch"
) -> str:
    """``serve.runtime`` → the runtime to serve: auto is the fastest variant that passed; torch, or auto
    with none passed, is ``reference``: the model as trained (the n-gram family's is sklearn)."""
    if requested == "torch":
        return reference
    if requested == "auto":
        passed = [
            (row["speedup"], name) for name, row in variants.items() if name != "torch" and row.get("passed")
        ]
        return max(passed)[1] if passed else reference
    row = variants.get(requested)
    if row is None:
        raise ModelSourceError(
            f"serve.runtime {requested}: the model has no such variant (evaluate.variants.names made none)"
        )
    if not row.get("passed"):
        raise ModelSourceError(
            f"serve.runtime {requested} failed the parity gate: {'; '.join(row['problems'])}"
        )
    return requested

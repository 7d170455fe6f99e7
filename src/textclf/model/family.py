"""The model families a model directory can hold, behind one interface.

- ``encoder``: a fine-tuned transformer (:mod:`textclf.model.encoder`), fit by
  ``textclf.train.trainer.train_model``; its directory holds Hugging Face files.
- ``ngram``: char n-gram TF-IDF + logistic regression (:mod:`textclf.model.ngram`), fit by
  ``textclf.train.blend.fit_ngram``; its directory holds ``ngram.joblib``.
- ``blend``: the two mixed, the encoder's weight chosen on val (:mod:`textclf.model.blend`), fit by
  ``textclf.train.blend.fit_blend`` onto an encoder's directory, which then also holds ``ngram/`` and
  ``textclf_blend.json``.

Every family, loaded, has ``name``, ``labels``, ``runtime`` (what it runs on), ``variants`` (the other
runtimes :mod:`textclf.evaluate.variants` can make of it: only an encoder's), ``forward(normalized
texts, batch_size) -> (probabilities, truncated flags)`` and ``describe()`` (for the model card).
``model.family`` picks the candidate; every model directory also holds ``textclf_preprocessing.json``,
and :class:`~textclf.model.predictor.Predictor` (normalize, then ``forward``) is the one way to use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from textclf.errors import ModelSourceError
from textclf.model.blend import BLEND_FILE, load_blend, read_blend
from textclf.model.encoder import CONFIG_FILE, Encoder
from textclf.model.ngram import NGRAM_FILE, NgramModel

REFERENCE = "torch"  # the runtime name meaning "the model as trained" (fp32 torch for an encoder)


class Family(Protocol):
    name: str
    runtime: str

    @property
    def labels(self) -> list[str] | tuple[str, ...]: ...

    @property
    def variants(self) -> tuple[str, ...]: ...

    def forward(self, clean: list[str], batch_size: int | None) -> tuple[np.ndarray, list[bool]]: ...

    def describe(self) -> str: ...


def family_of(model_dir: Path) -> str:
    """Which family ``model_dir`` holds, by its files."""
    if (model_dir / BLEND_FILE).is_file():
        return "blend"
    if (model_dir / CONFIG_FILE).is_file():
        return "encoder"
    if (model_dir / NGRAM_FILE).is_file():
        return "ngram"
    raise ModelSourceError(f"{model_dir} holds no model: none of {CONFIG_FILE}, {NGRAM_FILE}")


def load_family(
    model_dir: Path,
    max_length: int | None,
    runtime: str = REFERENCE,
    device: str | None = None,
    onnx_dir: Path | None = None,
    threads: int | None = None,
) -> Family:
    """The family in ``model_dir`` on ``runtime`` (``torch``: as trained; otherwise one of its variants)."""
    name = family_of(model_dir)
    if name == "ngram":
        if runtime not in (REFERENCE, NgramModel.runtime):
            raise ModelSourceError(
                f"the ngram family runs only as trained; runtime {runtime!r} is an encoder's"
            )
        return NgramModel.load(model_dir)
    if max_length is None:
        raise ModelSourceError(f"{model_dir}: an encoder needs max_length in its preprocessing record")
    encoder = Encoder(model_dir, max_length, runtime, device, onnx_dir, threads)
    return load_blend(model_dir, encoder) if name == "blend" else encoder


def describe(model_dir: Path) -> str:
    """The family in ``model_dir`` in one line, for the model card (without loading an encoder)."""
    name = family_of(model_dir)
    if name == "ngram":
        return NgramModel.load(model_dir).describe()
    return read_blend(model_dir).describe() if name == "blend" else Encoder.describe()


def reference_runtime(model_dir: Path) -> str:
    """The runtime of the model in ``model_dir`` as trained: what serves it when no variant is chosen."""
    return NgramModel.runtime if family_of(model_dir) == "ngram" else REFERENCE

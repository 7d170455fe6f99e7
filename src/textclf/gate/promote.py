"""``textclf gate`` / ``promote`` / ``rollback``: evidence -> :func:`decide` -> record -> alias moves.

The candidate (newest ``challenger``, or a given run or version) and the current ``champion`` are both
re-scored on the current test split, :func:`decide` judges them, the decision record (JSON + Markdown)
is written to ``<paths.reports>/gate/`` and, unless dry-run, logged to the candidate's run and tagged
on its version; then the candidate is promoted when the decision says so. The promotion is a
compare-and-set against the champion the decision was made against (see ``registry``), so two gate
runs at once cannot both promote.

A version that already is the champion is never promoted again: comparing a model with itself
proves nothing, so its record gets a failing ``already_champion`` row whatever ``min_improvement``
is (with ``min_improvement > 0`` the identical comparison fails ``significant_improvement`` too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from textclf.config import Config
from textclf.errors import TextclfError
from textclf.gate import registry as R
from textclf.gate.decision import CriterionResult, Decision, decide
from textclf.gate.evidence import ScoredModel, load_test_split, score_model, score_version
from textclf.tracking.store import client as make_client

log = logging.getLogger(__name__)

RECORDS_DIR = "gate"
RUN_ARTIFACT_DIR = "gate"
LATEST = "latest"


class GateRejected(TextclfError):
    """A manual promotion without --force did not pass the gate."""

    exit_code = 4

    def __init__(self, message: str, outcome: GateOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class GateOutcome:
    decision: Decision
    version: str | None  # None: a dry run of an unregistered run
    promoted: bool
    record_paths: tuple[Path, ...]
    message: str
    dry_run: bool = False
    champion_before: str | None = None
    candidate_label: str = ""
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Candidate:
    label: str  # the version, or "run:<id8>" for an unregistered run in a dry run
    version: str | None
    source: str
    run_id: str | None


def records_dir(cfg: Config, root: Path) -> Path:
    return Path(root) / cfg.paths.reports / RECORDS_DIR


def _model_uri_of_run(c: MlflowClient, run_id: str) -> str:
    try:
        run = c.get_run(run_id)
    except MlflowException:
        raise TextclfError(f"run {run_id} not found in {c.tracking_uri}") from None
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise TextclfError(f"run {run_id} logged no model; nothing to gate")
    return f"models:/{outputs[-1].model_id}"


def _resolve_candidate(
    cfg: Config, root: Path, c: MlflowClient, run_id: str | None, version: str | None, dry_run: bool
) -> _Candidate:
    name = R.registered_model_name(cfg)
    if version is not None:
        source, rid = _source(c, name, str(version))
        return _Candidate(str(version), str(version), source, rid)
    if run_id is not None:
        found = R.versions_of_run(c, name, run_id)
        if found:
            source, rid = _source(c, name, found[-1])
            return _Candidate(found[-1], found[-1], source, rid)
        uri = _model_uri_of_run(c, run_id)
        if dry_run:  # a dry run changes nothing, registration included
            return _Candidate(f"run:{run_id[:8]}", None, uri, run_id)
        v = R.register_candidate(cfg, root, run_id, uri, c=c)
        return _Candidate(v, v, uri, run_id)
    aliases = R.current_aliases(c, name)
    picked = aliases.get(R.CHALLENGER) or aliases.get(R.CHAMPION)
    if picked is None:
        raise TextclfError(
            f"nothing to gate: registered model {name} has no @{R.CHALLENGER} (train a model, "
            "or pass a run id or version)"
        )
    source, rid = _source(c, name, picked)
    return _Candidate(picked, picked, source, rid)


def _source(c: MlflowClient, name: str, version: str) -> tuple[str, str | None]:
    try:
        mv = c.get_model_version(name, version)
    except MlflowException:
        raise TextclfError(f"registered model {name} has no version {version}") from None
    return str(mv.source), mv.run_id


def _champion_since(events: list[R.Event], version: str) -> str:
    for e in reversed(events):
        if e.action == "set_alias" and e.alias == R.CHAMPION and e.version == version:
            return f"since {e.at}, via {e.via}" + (f", decision {e.decision_id}" if e.decision_id else "")
    return "since before the recorded history"


def already_champion(decision: Decision, version: str, since: str) -> Decision:
    """The same decision with a failing ``already_champion`` row: never re-promote the champion."""
    row = CriterionResult(
        "already_champion",
        version,
        None,
        False,
        f"v{version} already holds @{R.CHAMPION} ({since}); the gate does not promote it again",
        comparator="!=",
    )
    verdict = "would pass the other criteria" if decision.promote else decision.reason
    new_id = hashlib.sha256(f"{decision.id}:already_champion".encode()).hexdigest()[:16]
    return dataclasses.replace(
        decision,
        id=new_id,
        promote=False,
        criteria=(*decision.criteria, row),
        reason=f"rejected: v{version} is already the champion ({since}); compared with itself it {verdict}",
        note=(decision.note + "; " if decision.note else "") + "candidate is the current champion",
    )


# --------------------------------------------------------------------------- records
def _record(
    cfg: Config,
    decision: Decision,
    cand: _Candidate,
    champion: str | None,
    champion_run: str | None,
    test_info: dict[str, Any],
    notes: list[str],
    outcome: dict[str, Any],
) -> dict[str, Any]:
    return {
        "decision_id": decision.id,
        "created_at": R.now_utc(),
        "actor": R.current_actor(),
        "registered_model": R.registered_model_name(cfg),
        "candidate": {
            "label": cand.label,
            "version": cand.version,
            "run_id": cand.run_id,
            "source": cand.source,
        },
        "champion_before": {"version": champion, "run_id": champion_run},
        "test_split": test_info,
        "outcome": outcome,
        "notes": notes,
        "decision": decision.to_dict(),
    }


def _markdown(record: dict[str, Any], decision: Decision) -> str:
    out = record["outcome"]
    cand, champ = record["candidate"], record["champion_before"]
    lines = [
        f"# Gate record `{decision.id}` — {out['status']}",
        "",
        f"- registered model: `{record['registered_model']}`",
        f"- candidate: `{_show(cand['label'])}` (run `{cand['run_id']}`)",
        f"- champion at decision time: `{_show(champ['version']) if champ['version'] else 'none'}`",
        f"- test split: `{record['test_split']['path']}` digest `{record['test_split']['digest'][:12]}` "
        f"({record['test_split']['n']:,} rows)",
        f"- when / who: {record['created_at']} / {record['actor']}",
        f"- outcome: {out['message']}",
        "",
    ]
    if record["notes"]:
        lines += ["Notes:", "", *(f"- {n}" for n in record["notes"]), ""]
    return "\n".join(lines) + "\n" + decision.to_markdown()


def write_records(
    cfg: Config, root: Path, record: dict[str, Any], decision: Decision, dry_run: bool
) -> tuple[Path, Path]:
    """``decision-<id>[.dry-run].json|.md`` plus ``latest.json|.md`` under ``<paths.reports>/gate/``."""
    out = records_dir(cfg, root)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"decision-{decision.id}" + (".dry-run" if dry_run else "")
    json_text = json.dumps(record, ensure_ascii=False, indent=2) + "\n"
    md_text = _markdown(record, decision)
    j, m = out / f"{stem}.json", out / f"{stem}.md"
    j.write_text(json_text, encoding="utf-8")
    m.write_text(md_text, encoding="utf-8")
    (out / f"{LATEST}.json").write_text(json_text, encoding="utf-8")
    (out / f"{LATEST}.md").write_text(md_text, encoding="utf-8")
    return j, m


def _publish(
    c: MlflowClient,
    cfg: Config,
    cand: _Candidate,
    decision: Decision,
    paths: tuple[Path, Path],
    promoted: bool,
) -> None:
    """Log the record to the candidate's run and tag its version (never in a dry run)."""
    if cand.run_id:
        for p in paths:
            c.log_artifact(cand.run_id, str(p), RUN_ARTIFACT_DIR)
    if cand.version:
        R.tag_gate_result(
            c,
            R.registered_model_name(cfg),
            cand.version,
            decision.id,
            decision.promote,
            decision.reason,
            promoted,
        )


# --------------------------------------------------------------------------- the gate
def run_gate(
    cfg: Config,
    root: Path,
    *,
    run_id: str | None = None,
    version: str | None = None,
    dry_run: bool = False,
    via: str = R.VIA_GATE,
    reason: str = "",
    _fault: R.FaultHook | None = None,
    _after_decision: Callable[[Decision], None] | None = None,
) -> GateOutcome:
    """Judge a candidate against the champion on the current test split and promote if it passes.

    Candidate: ``version``, else the run's version (registered now unless ``dry_run``), else the
    newest ``@challenger``, else the champion itself (reported as already champion). Raises
    :class:`PromotionConflict` when another promotion moved the champion after the decision (the
    record is written first).
    """
    root = Path(root)
    c = make_client(cfg, root)
    name = R.registered_model_name(cfg)
    if not dry_run:
        # Close any interrupted alias operation first, so the decision sees a recorded state.
        with R.registry_writer(cfg, root, c):
            pass
    cand = _resolve_candidate(cfg, root, c, run_id, version, dry_run)
    champion = R.alias_version(c, name, R.CHAMPION)
    test = load_test_split(cfg, root)
    log.info("gate: candidate %s vs champion %s on %d test rows", cand.label, champion, len(test.frame))

    champion_run: str | None = None
    with tempfile.TemporaryDirectory(prefix="textclf-gate-") as tmp:
        ch = score_model(cfg, c, cand.label, cand.source, cand.run_id, test, Path(tmp) / "candidate")
        cp: ScoredModel | None = None
        if champion is not None and champion == cand.version:
            cp = ch
        elif champion is not None:
            cp = score_version(cfg, c, champion, test, Path(tmp) / "champion", measure=False)
        if cp is not None:
            champion_run = cp.run_id
    decision = decide(ch.evidence, cp.evidence if cp else None, cfg.gate)
    if champion is not None and champion == cand.version:
        decision = already_champion(decision, champion, _champion_since(R.read_history(c, name), champion))
    notes = list(ch.notes) + ([n for n in cp.notes if n not in ch.notes] if cp else [])
    if cp is not None and cp is not ch and not cp.train_ids_known:
        notes.append(
            f"champion v{champion}: its training data is unknown, so 0 test examples were excluded as "
            "seen by it; if it trained on today's test rows, its score is inflated"
        )
    if _after_decision is not None:
        _after_decision(decision)

    test_info = {"path": str(test.path), "digest": test.digest, "n": len(test.frame)}
    promoted, error, conflict = False, None, None
    try:
        if decision.promote and not dry_run:
            assert cand.version is not None  # registered above unless dry_run
            why = decision.reason if not reason else f"{reason}; {decision.reason}"
            R.promote_version(
                cfg,
                root,
                cand.version,
                expected_champion=champion,
                via=via,
                reason=why,
                decision_id=decision.id,
                _fault=_fault,
                c=c,
            )
            promoted = True
    except R.PromotionConflict as err:
        conflict = err
        error = str(err)
    except BaseException as err:
        error = f"promotion interrupted: {type(err).__name__}: {err}"
        raise
    finally:
        status, message = _status_line(decision, cand, champion, dry_run, promoted, error)
        outcome = {
            "status": status,
            "promoted": promoted,
            "dry_run": dry_run,
            "message": message,
            "error": error,
        }
        record = _record(cfg, decision, cand, champion, champion_run, test_info, notes, outcome)
        paths = write_records(cfg, root, record, decision, dry_run)
        if not dry_run:
            _publish(c, cfg, cand, decision, paths, promoted)
        log.info("gate %s: %s", decision.id, message)
    if conflict is not None:
        raise conflict
    return GateOutcome(
        decision=decision,
        version=cand.version,
        promoted=promoted,
        record_paths=paths,
        message=message,
        dry_run=dry_run,
        champion_before=champion,
        candidate_label=cand.label,
        notes=tuple(notes),
    )


def _status_line(
    decision: Decision,
    cand: _Candidate,
    champion: str | None,
    dry_run: bool,
    promoted: bool,
    error: str | None,
) -> tuple[str, str]:
    shown = _show(cand.label)
    if error:
        return "NOT PROMOTED (conflict)" if "changed from" in error else "INTERRUPTED", error
    if promoted:
        return (
            "PROMOTED",
            f"{shown} promoted to @{R.CHAMPION} (was {_show(champion) if champion else 'none'}): "
            f"{decision.reason}",
        )
    if decision.promote and dry_run:
        return "WOULD PROMOTE (dry run)", f"dry run: {shown} would be promoted: {decision.reason}"
    prefix = "dry run: " if dry_run else ""
    return "REJECTED", f"{prefix}{shown} not promoted: {decision.reason}"


def _show(label: str) -> str:
    """``v3`` for a registered version, the label itself otherwise (``run:1a2b3c4d``)."""
    return f"v{label}" if label.isdigit() else label


# --------------------------------------------------------------------------- manual operations
def promote(
    cfg: Config, root: Path, version: str, *, force: bool = False, reason: str
) -> GateOutcome | R.AliasMove:
    """``textclf promote VERSION [--force] --reason ...``.

    Without ``force`` the gate criteria run first (recorded via ``manual``); a rejection raises
    :class:`GateRejected`. With ``force`` the champion moves without a decision, recorded as a forced
    manual override (``textclf.promotion.forced`` on the version).
    """
    if not reason.strip():
        raise TextclfError("a manual promotion needs a reason (--reason)")
    version = str(version)
    if not force:
        outcome = run_gate(cfg, root, version=version, via=R.VIA_MANUAL, reason=f"manual: {reason}")
        if not outcome.promoted:
            raise GateRejected(f"v{version} did not pass the gate: {outcome.decision.reason}", outcome)
        return outcome
    c = make_client(cfg, root)
    name = R.registered_model_name(cfg)
    R._require_version(c, name, version)
    with R.registry_writer(cfg, root, c) as w:
        current = w.aliases().get(R.CHAMPION)
        move = R.promote_locked(
            w, version, expected_champion=current, via=R.VIA_MANUAL, reason=f"forced: {reason}"
        )
        c.set_model_version_tag(name, version, R.FORCED_TAG, "true")
    return move


def rollback(cfg: Config, root: Path, reason: str) -> R.AliasMove:
    """``textclf rollback --reason ...``: swap @champion and @previous-champion (recorded)."""
    return R.rollback(cfg, root, reason)

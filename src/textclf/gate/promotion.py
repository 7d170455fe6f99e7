"""``textclf gate`` / ``promote`` / ``rollback``: evidence → :func:`decide` → record → alias moves.

The candidate (a given version or run, else the newest ``@challenger``) and the current ``@champion``
are both re-scored on the current test split; :func:`decide` judges them; the decision record (JSON +
Markdown) goes to ``<paths.reports>/gate/``, to the candidate's run and to its version's tags and
description; then the candidate is promoted when the decision says so, under the registry lock, as a
compare-and-set against the champion the decision was made against. A version that already is the
champion is never promoted again: comparing a model with itself proves nothing — unless its promotion
stopped half way (still marked pending in the registry): then it is judged against the version it
replaced and the promotion is finished. Whether the candidate was promoted is what the registry says
afterwards (``@champion`` re-read), whatever was raised on the way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from textclf import contracts as C
from textclf.config import Config
from textclf.data.prepare import read_split, split_digest
from textclf.errors import TextclfError
from textclf.gate.decision import Criterion, Decision, decide
from textclf.gate.decision import reason as reason_line
from textclf.gate.evidence import score_version
from textclf.gate.infra import validate_candidate
from textclf.serving.package import label_bento
from textclf.serving.release import ServedModel, snapshot_lineage
from textclf.tracking import registry as R
from textclf.tracking.store import client as make_client
from textclf.tracking.store import gate_account, tracking_uri

log = logging.getLogger(__name__)


class GateRejected(TextclfError):
    """A manual promotion without --force did not pass the gate."""

    exit_code = 5


@dataclass(frozen=True)
class GateOutcome:
    decision: Decision
    version: str | None  # None: a dry run of an unregistered run
    promoted: bool
    message: str
    record: Path
    notes: tuple[str, ...] = ()
    bento: str | None = None  # the candidate's Bento, built and served for infra validation


def _candidate(
    cfg: Config, c: MlflowClient, run_id: str | None, version: str | None, dry_run: bool
) -> str | None:
    model = cfg.mlflow.registered_model
    if version is not None:
        R.require_version(c, model, version)
        return version
    if run_id is not None:
        found = c.search_model_versions(f"name='{model}' and run_id='{run_id}'")
        if found:
            return str(max(int(mv.version) for mv in found))
        if dry_run:
            raise TextclfError(
                f"run {run_id} is not registered; a dry run registers nothing: gate it for real"
            )
        outputs = c.get_run(run_id).outputs
        if not outputs or not outputs.model_outputs:
            raise TextclfError(f"run {run_id} logged no model; nothing to gate")
        return R.register(c, model, run_id, f"models:/{outputs.model_outputs[-1].model_id}")
    picked = R.alias(c, model, R.CHALLENGER) or R.alias(c, model, R.CHAMPION)
    if picked is None:
        raise TextclfError(
            f"nothing to gate: {model} has no @{R.CHALLENGER}; train a model or pass a run or version"
        )
    return picked


def _already_champion(decision: Decision, version: str) -> Decision:
    row = Criterion("already_champion", version, None, False, f"v{version} already holds @champion", "!=")
    verdict = "would pass the other criteria" if decision.promote else decision.reason
    return dataclasses.replace(
        decision,
        promote=False,
        criteria=(*decision.criteria, row),
        reason=f"rejected: v{version} is already the champion; compared with itself it {verdict}",
    )


@gate_account()  # the gate's service account, when the environment names one
def run_gate(
    cfg: Config,
    root: Path,
    *,
    run_id: str | None = None,
    version: str | None = None,
    dry_run: bool = False,
    via: str = "gate",
) -> GateOutcome:
    """Judge a candidate against the champion on the current test split; promote if it passes.

    Raises :class:`PromotionConflict` when another promotion moved the champion after the decision
    (the record is written first).
    """
    c = make_client(cfg, root)
    model = cfg.mlflow.registered_model
    cand = _candidate(cfg, c, run_id, version, dry_run)
    assert cand is not None
    champion = R.alias(c, model, R.CHAMPION)
    resuming = champion == cand and R.pending(c, model, cand)
    if resuming:  # a promotion of cand passed the commit point and stopped: judge it as it was judged
        champion = R.replaced(c, model, cand)
        log.warning("gate: v%s holds @champion but its promotion was not finished: finishing it", cand)
    test = read_split(root / cfg.paths.prepared, "test")
    digest = split_digest(test)
    log.info("gate: candidate v%s vs champion %s on %d test rows", cand, champion, len(test))
    if not dry_run:
        R.seal(c, model, cand)  # the files judged below are these: packaging and rollback check them
        snapshot_lineage(c, model, cand)  # and the lineage packaging labels them with
    with tempfile.TemporaryDirectory(prefix="textclf-gate-") as tmp:
        # the candidate as its Bento will serve it (runtime and latency budget included): built once,
        # then judged, served in infra validation and packaged
        served = ServedModel.load(c, model, cand, cfg.serve.runtime, Path(tmp) / "candidate")
        ch = score_version(cfg, c, served, test, digest, Path(tmp) / "candidate-work", measure=True)
        cp = None
        if champion is not None and champion != cand:
            incumbent = ServedModel.load(c, model, champion, "torch", Path(tmp) / "champion")
            cp = score_version(cfg, c, incumbent, test, digest, Path(tmp) / "champion-work", measure=False)
        decision = decide(ch.evidence, cp.evidence if cp else None, cfg.gate)
        if champion == cand:
            decision = _already_champion(decision, cand)
        notes = tuple(dict.fromkeys(ch.notes + (cp.notes if cp else ())))
        bento = None
        if decision.promote and not dry_run and cfg.gate.infra_validation.enabled:
            decision, bento = _infra_validation(cfg, root, served, ch.run_id, test, decision)
    decided_at = C.now()
    promoted = False
    error: BaseException | None = None
    try:
        if (decision.promote or resuming) and not dry_run:
            try:
                with R.registry_lock(tracking_uri(cfg, root), model, cfg.gate.registry):
                    R.move_champion(
                        c, model, cand, expected=champion, via=via, reason=decision.reason, settle_now=False
                    )
            except BaseException as err:  # noqa: BLE001 - a lost lock lease is a CancelledError (Prefect)
                error = err  # the registry says below what was done
            promoted = error is None  # what the record says should the registry be unreadable now
            promoted = R.alias(c, model, R.CHAMPION) == cand
    finally:
        message = _message(decision, cand, champion, dry_run, promoted, error)
        record = _write_record(cfg, root, decision, cand, champion, digest, notes, message, dry_run)
        if not dry_run:
            _record_on_registry(c, model, cand, ch.run_id, decision, record, decided_at)
    if error is not None and (not promoted or isinstance(error, KeyboardInterrupt | SystemExit)):
        raise error
    if promoted:
        if error is not None:  # after the commit point: the next gate run of cand finishes the rest
            log.warning("gate: v%s holds @champion; what failed after the alias moved: %r", cand, error)
        else:
            R.settle(c, model, cand)  # the promotion and the gate's records of it are complete
    return GateOutcome(decision, cand, promoted, message, record, notes, bento)


def _infra_validation(
    cfg: Config, root: Path, served: ServedModel, run_id: str | None, test: Any, decision: Decision
) -> tuple[Decision, str]:
    """Build and serve the candidate's Bento (textclf.gate.infra); the result is one more row, and a
    failure means no promotion and a Bento labelled rejected."""

    result, bento = validate_candidate(cfg, root, served, run_id, test["text"].tolist())
    row = Criterion(
        "infra_validation",
        result.agreement,
        cfg.gate.infra_validation.min_agreement,
        result.passed,
        result.reason,
    )
    criteria = (*decision.criteria, row)
    if result.passed:
        why = reason_line(True, criteria, decision.comparison)
        return dataclasses.replace(decision, criteria=criteria, reason=why), bento
    label_bento(bento, {"textclf_status": "rejected", "textclf_rejected_because": result.reason[:500]})
    why = f"rejected: infra validation of {bento}: {result.reason}"
    return dataclasses.replace(decision, promote=False, criteria=criteria, reason=why), bento


def _message(
    decision: Decision,
    cand: str,
    champion: str | None,
    dry_run: bool,
    promoted: bool,
    error: BaseException | None,
) -> str:
    why = (str(error) or type(error).__name__) if error is not None else ""
    if promoted:
        unfinished = f" (unfinished, to be completed by the next gate run: {why})" if error else ""
        return (
            f"v{cand} promoted to @champion (was {'v' + champion if champion else 'none'}){unfinished}: "
            f"{decision.reason}"
        )
    if error is not None:
        return why if isinstance(error, R.PromotionConflict) else f"v{cand} not promoted: {why}"
    if dry_run:
        would = "would be promoted" if decision.promote else "would not be promoted"
        return f"dry run: v{cand} {would}: {decision.reason}"
    return f"v{cand} not promoted: {decision.reason}"


def _write_record(
    cfg: Config,
    root: Path,
    decision: Decision,
    cand: str,
    champion: str | None,
    digest: str,
    notes: tuple[str, ...],
    message: str,
    dry_run: bool,
) -> Path:
    """``decision-<id>[.dry-run].json|.md`` plus ``latest.json|.md`` under ``<paths.reports>/gate/``."""
    out = root / cfg.paths.reports / C.GATE_RECORDS_DIR
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "decision_id": decision.id,
        "created_at": C.now(),
        "registered_model": cfg.mlflow.registered_model,
        "candidate": cand,
        "champion_before": champion,
        "test_split": {"path": (cfg.paths.prepared / C.split_file("test")).as_posix(), "digest": digest},
        "outcome": message,
        "dry_run": dry_run,
        "notes": list(notes),
        "decision": decision.to_dict(),
    }
    markdown = f"# Gate record `{decision.id}`\n\n- outcome: {message}\n" + "".join(
        f"- note: {n}\n" for n in notes
    )
    markdown += "\n" + decision.to_markdown()
    stem = f"decision-{decision.id}" + (".dry-run" if dry_run else "")
    for name in (stem, "latest"):
        (out / f"{name}.json").write_text(
            json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    return out / f"{stem}.json"


def _record_on_registry(
    c: MlflowClient, model: str, version: str, run_id: str | None, decision: Decision, record: Path, at: str
) -> None:
    """The record on the candidate's run; result, reason and a link to the record on its version."""
    link = f"decision record: {record.name}"
    if run_id:
        for path in (record, record.with_suffix(".md")):
            c.log_artifact(run_id, str(path), C.GATE_RECORDS_DIR)
        c.set_tag(run_id, R.GATE_DECISION, decision.id)  # the flow's "already judged" marker
        experiment = c.get_run(run_id).info.experiment_id
        path = f"#/experiments/{experiment}/runs/{run_id}/artifacts/{C.GATE_RECORDS_DIR}/{record.name}"
        link = f"[decision record]({path})"
    tags = {
        R.GATE_DECISION: decision.id,
        R.GATE_RESULT: "pass" if decision.promote else "fail",
        R.GATE_REASON: decision.reason[:5000],
        R.GATE_AT: at,
    }
    for key, value in tags.items():
        c.set_model_version_tag(model, version, key, value)
    c.update_model_version(model, version, description=f"{decision.reason}\n\n{link}")


# --------------------------------------------------------------------------- manual operations
@gate_account()  # the gate's service account, when the environment names one
def promote(cfg: Config, root: Path, version: str, *, force: bool, reason: str) -> R.AliasMove | GateOutcome:
    """``textclf promote VERSION --reason ...``: through the gate, or with ``force`` straight to champion
    (recorded as ``promoted_via=forced``)."""
    if not reason.strip():
        raise TextclfError("a manual promotion needs a reason (--reason)")
    if not force:
        outcome = run_gate(cfg, root, version=version, via="manual")
        if not outcome.promoted:
            raise GateRejected(f"v{version} did not pass the gate: {outcome.decision.reason}")
        return outcome
    c, model = make_client(cfg, root), cfg.mlflow.registered_model
    R.require_version(c, model, version)
    snapshot_lineage(c, model, version)
    with R.registry_lock(tracking_uri(cfg, root), model, cfg.gate.registry):
        current = R.alias(c, model, R.CHAMPION)
        return R.move_champion(c, model, version, expected=current, via="forced", reason=reason)  # settles


@gate_account()  # the gate's service account, when the environment names one
def rollback(cfg: Config, root: Path, reason: str) -> R.AliasMove:
    """``textclf rollback``: champion ← previous-champion (recorded on both versions)."""
    if not reason.strip():
        raise TextclfError("a rollback needs a reason (--reason)")
    c, model = make_client(cfg, root), cfg.mlflow.registered_model
    with R.registry_lock(tracking_uri(cfg, root), model, cfg.gate.registry):
        return R.roll_back_champion(c, model, reason)

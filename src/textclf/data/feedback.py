"""``textclf data import --feedback``: the feedback the service recorded becomes the next data version.

Records are imported by id: a record is added when its id is not yet in ``paths.feedback``, whatever its
timestamp, so a record that reaches the store late (writer lag, another replica, clock skew) is imported
by the next run, and a second run adds nothing. The file is rewritten through a temporary file and
``os.replace`` (never a torn row), and ``dvc add`` runs every time, so a run interrupted between the
write and ``dvc add`` is completed by the next one.

Imported rows are ``pending`` review: ``textclf feedback list|approve|reject`` sets ``review`` (and records
the data version); with ``prepare.feedback.review`` only approved rows join train, within the caps of
``prepare.feedback`` (see :func:`textclf.data.prepare.add_feedback`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from textclf.config import Config
from textclf.contracts import ENV_MONITORING_DIR
from textclf.data.records import FEEDBACK, read_records
from textclf.errors import DataError

log = logging.getLogger(__name__)

COLUMNS = ["id", "text", "label", "model_version", "received_at", "submitter", "review"]
REVIEW = ("pending", "approved", "rejected")


def record_id(ts: str, text: str, label: str) -> str:
    """The id of a record written before records carried one: a hash of what it says."""
    return hashlib.sha256(json.dumps([ts, text, label]).encode()).hexdigest()[:32]


def _row(record: dict[str, Any]) -> dict[str, str]:
    return {
        "id": record.get("id") or record_id(record["ts"], record["text"], record["label"]),
        "text": record["text"],
        "label": record["label"],
        "model_version": record.get("model_version") or "",
        "received_at": record["ts"],
        "submitter": record.get("submitter") or "",
        "review": "pending",
    }


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS, dtype=object)
    old = pd.read_csv(path, dtype=object, keep_default_na=False)
    if "id" not in old:  # a file imported before records had ids
        ids = [record_id(*r) for r in zip(old["received_at"], old["text"], old["label"], strict=True)]
        old.insert(0, "id", ids)
    old = old.assign(**{column: "" for column in COLUMNS if column not in old})
    old["review"] = old["review"].replace("", "pending")  # imported before review existed
    return old


def _write(frame: pd.DataFrame, path: Path) -> None:
    """Replace ``path`` with ``frame`` atomically (a temporary file beside it, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding="utf-8"
    ) as fh:
        try:
            # A lone surrogate (valid in the JSON record, not in UTF-8) becomes "?".
            frame.to_csv(fh, index=False, lineterminator="\n", errors="replace")
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            Path(fh.name).unlink(missing_ok=True)
            raise
    os.replace(fh.name, path)


def import_feedback(cfg: Config, root: Path, dvc: bool) -> int:
    """Add the recorded feedback whose ids are not yet in ``paths.feedback`` (with the model version and
    time as provenance), then ``dvc add`` the data folder. Returns the number of rows added."""
    path = root / cfg.paths.feedback
    folder = Path(os.environ.get(ENV_MONITORING_DIR) or root / cfg.serve.monitoring.dir)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed mid-write
        stale.unlink()
    old, bad, rows = _read(path), list[str](), list[dict[str, str]]()
    for record in read_records(folder, FEEDBACK, bad=bad):
        if isinstance(record.get("text"), str) and isinstance(record.get("label"), str):
            rows.append(_row(record))
        else:
            bad.append(f"record {record.get('id') or record['ts']} without a text or label")
    new = pd.DataFrame(rows, columns=COLUMNS, dtype=object)
    new = new[~new["id"].isin(old["id"])].drop_duplicates("id")
    if bad:
        log.warning("skipped %d unreadable feedback records (%s, ...)", len(bad), bad[0])
    if len(new):
        _write(pd.concat([old, new], ignore_index=True), path)
        log.info("added %d feedback rows to %s (pending review)", len(new), cfg.paths.feedback)
    _dvc_add(cfg, root, dvc)
    return len(new)


def _dvc_add(cfg: Config, root: Path, dvc: bool) -> None:
    if dvc and (root / ".dvc").is_dir():
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            repo.add(str(root / cfg.paths.data_dir))


def feedback_rows(cfg: Config, root: Path, status: str | None = None) -> pd.DataFrame:
    """``textclf feedback list``: the imported feedback, of one review ``status`` when given."""
    frame = _read(root / cfg.paths.feedback)
    return frame if status is None else frame[frame["review"] == status]


def review(cfg: Config, root: Path, ids: list[str], status: str, dvc: bool) -> int:
    """``textclf feedback approve|reject``: set the review of the rows ``ids`` and record the data
    version. Returns the number of rows changed."""
    if status not in REVIEW:
        raise DataError(f"review status {status!r} is not one of {REVIEW}")
    path = root / cfg.paths.feedback
    frame = _read(path)
    if unknown := sorted(set(ids) - set(frame["id"])):
        raise DataError(f"no feedback with id {unknown[:5]} in {cfg.paths.feedback}")
    hit = frame["id"].isin(ids) & (frame["review"] != status)
    if hit.any():
        frame.loc[hit, "review"] = status
        _write(frame, path)
        log.info("%s %d feedback rows", status, int(hit.sum()))
    _dvc_add(cfg, root, dvc)
    return int(hit.sum())

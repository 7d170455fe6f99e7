"""``textclf data import --feedback``: the feedback the service recorded becomes the next data version.

Records are imported by id: a record is added when its id is not yet in ``paths.feedback``, whatever its
timestamp, so a record that reaches the store late (writer lag, another replica, clock skew) is imported
by the next run, and a second run adds nothing. The file is rewritten through a temporary file and
``os.replace`` (never a torn row), and ``dvc add`` runs every time, so a run interrupted between the
write and ``dvc add`` is completed by the next one.
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
from textclf.serving.records import FEEDBACK, read_records

log = logging.getLogger(__name__)

COLUMNS = ["id", "text", "label", "model_version", "received_at"]


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
    }


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS, dtype=object)
    old = pd.read_csv(path, dtype=object, keep_default_na=False)
    if "id" not in old:  # a file imported before records had ids
        ids = [record_id(*r) for r in zip(old["received_at"], old["text"], old["label"], strict=True)]
        old.insert(0, "id", ids)
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
    folder = Path(os.environ.get("TEXTCLF_MONITORING_DIR") or root / cfg.serve.monitoring.dir)
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
        log.info("added %d feedback rows to %s", len(new), cfg.paths.feedback)
    if dvc and (root / ".dvc").is_dir():
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            repo.add(str(root / cfg.paths.data_dir))
    return len(new)

"""What the service records: a sample of requests with their predictions, and user feedback.

Records are JSON lines in date-partitioned, size-rotated files:
``<dir>/<kind>/date=YYYY-MM-DD/part-<pid>-<n>.jsonl``.
The service never waits on the disk: :meth:`Recorder.record` puts into a bounded queue and counts a
drop when it is full; one background thread writes. Readers (``textclf monitor``, ``textclf data import
--feedback``: :func:`import_feedback`) use :func:`read_records`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textclf.config import Config
from textclf.contracts import ENV_MONITORING_DIR

TRAFFIC, FEEDBACK = "traffic", "feedback"


class Recorder:
    """Bounded queue + one writer thread. ``record`` never blocks and never raises."""

    def __init__(self, folder: Path, kind: str, queue_size: int, rotate_bytes: int) -> None:
        self.folder, self.kind, self.rotate_bytes = Path(folder), kind, rotate_bytes
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self.written = self.dropped = 0
        self._part = 0
        threading.Thread(target=self._write_forever, name=f"textclf-{kind}-writer", daemon=True).start()

    def record(self, item: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def _path(self, day: str) -> Path:
        folder = self.folder / self.kind / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{os.getpid()}-{self._part:04d}.jsonl"
        if path.exists() and path.stat().st_size >= self.rotate_bytes:
            self._part += 1
            return self._path(day)
        return path

    def _write_forever(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < 1000:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                day = batch[0]["ts"][:10]
                with self._path(day).open("a", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in batch)
                self.written += len(batch)
            except Exception:  # noqa: BLE001 - a disk problem must never reach a request
                self.dropped += len(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()


def read_records(folder: Path, kind: str, since: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record of ``kind`` under ``folder`` with ``ts >= since`` (ISO 8601), oldest partition first."""
    for day in sorted((Path(folder) / kind).glob("date=*")):
        if since and day.name.removeprefix("date=") < since[:10]:
            continue
        for path in sorted(day.glob("*.jsonl")):
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        item = json.loads(line)
                        if not since or item["ts"] >= since:
                            yield item


def import_feedback(cfg: Config, root: Path, dvc: bool) -> int:
    """``textclf data import --feedback``: append the feedback the service recorded since the last import
    to ``paths.feedback`` (append-only, with the model version and time as provenance) and record the
    new data version with ``dvc add``. Returns the number of rows added."""
    import pandas as pd

    path = root / cfg.paths.feedback
    folder = Path(os.environ.get(ENV_MONITORING_DIR) or root / cfg.serve.monitoring.dir)
    old = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else None
    last = old["received_at"].max() if old is not None and len(old) else None
    rows = [r for r in read_records(folder, FEEDBACK, last) if last is None or r["ts"] > last]
    if rows:
        new = pd.DataFrame(
            {
                "text": [r["text"] for r in rows],
                "label": [r["label"] for r in rows],
                "model_version": [r.get("model_version", "") for r in rows],
                "received_at": [r["ts"] for r in rows],
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        new.to_csv(path, mode="a", header=old is None, index=False, encoding="utf-8", lineterminator="\n")
        logging.getLogger(__name__).info("appended %d feedback rows to %s", len(rows), cfg.paths.feedback)
    if rows and dvc and (root / ".dvc").is_dir():
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            repo.add(str(root / cfg.paths.data_dir))
    return len(rows)

"""What the service records: a sample of requests with their predictions, and user feedback.

The folder holds user text (unless ``hash_texts``). Records are JSON lines in date-partitioned,
size-rotated files: ``<dir>/<kind>/date=YYYY-MM-DD/part-<host>-<pid>-<random>-<n>.jsonl``, so replicas
sharing a volume (where container pids repeat) never append to the same file.

* :class:`PartWriter` writes a batch as one ``bytes`` write; after a failed write it truncates the part
  back to its size before the batch (or moves to a new part), so a file never keeps half a batch from a
  live process. Every record encodes: a lone surrogate is escaped (``\\ud800``) instead of failing.
* :class:`Recorder` (traffic) never makes a request wait on the disk: a bounded queue (full: the record
  is dropped and counted) and one writer thread, drained by :meth:`Recorder.close` at shutdown.
* Feedback is written synchronously with ``fsync`` (``PartWriter.write(..., fsync=True)``): it is on disk
  before ``/feedback`` answers.
* :func:`remove_old_parts` applies ``serve.monitoring.retention_days`` and ``max_total_mb`` at writer start
  and at each rotation.
* :func:`read_records` (``textclf monitor``, ``textclf data import --feedback``) skips and counts a line
  that does not parse (a torn tail after a crash, bad UTF-8) instead of raising.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRAFFIC, FEEDBACK = "traffic", "feedback"
_STOP = object()  # queued by Recorder.close: write what came before, then end the thread


def encode_record(item: dict[str, Any]) -> bytes:
    """One JSON line. Text with a lone surrogate (valid in a JSON string, not in UTF-8) is written with
    ASCII escapes, which read back to the same string."""
    try:
        return (json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(item) + "\n").encode("ascii")


def remove_old_parts(folder: Path, retention_days: float | None, max_total_mb: float | None) -> int:
    """Delete parts under ``folder`` (one kind) last written more than ``retention_days`` ago, then the
    oldest until the rest fit in ``max_total_mb``. Returns how many were removed."""
    parts = []
    for path in folder.glob("date=*/part-*.jsonl"):
        try:
            parts.append((path.stat().st_mtime, path.stat().st_size, path))
        except FileNotFoundError:  # another replica removed it first
            continue
    parts.sort()
    cutoff = time.time() - retention_days * 86400 if retention_days is not None else float("-inf")
    total, cap = sum(size for _, size, _ in parts), (max_total_mb or float("inf")) * 2**20
    removed = 0
    for mtime, size, path in parts:
        if mtime >= cutoff and total <= cap:
            break
        path.unlink(missing_ok=True)
        total, removed = total - size, removed + 1
    if removed:
        log.info("removed %d old record parts under %s (retention)", removed, folder)
    return removed


class PartWriter:
    """Appends batches to this process's current part of ``<folder>/<kind>``; thread-safe."""

    def __init__(
        self,
        folder: Path,
        kind: str,
        rotate_bytes: int,
        retention_days: float | None = None,
        max_total_mb: float | None = None,
    ) -> None:
        self.root, self.rotate_bytes = Path(folder) / kind, rotate_bytes
        self.retention = (retention_days, max_total_mb)
        self.prefix = f"part-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._part = 0
        self._path: Path | None = None
        self._lock = threading.Lock()
        self._clean()

    def _clean(self) -> None:
        if self.retention != (None, None):
            try:
                remove_old_parts(self.root, *self.retention)
            except OSError as err:  # retention must never stop recording
                log.warning("record retention under %s failed: %s", self.root, err)

    def _current(self, day: str) -> Path:
        path = self._path
        if (
            path is None
            or path.parent.name != f"date={day}"
            or (path.exists() and path.stat().st_size >= self.rotate_bytes)
        ):
            if path is not None:
                self._part += 1
                self._clean()
            path = self._path = self.root / f"date={day}" / f"{self.prefix}-{self._part:04d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)  # also when someone removed it meanwhile
        return path

    def write(self, batch: list[dict[str, Any]], fsync: bool = False) -> None:
        """Write ``batch`` as one append (and ``fsync`` it when asked); on an error the part is left as
        it was before the call and the error is raised."""
        data = b"".join(encode_record(item) for item in batch)
        with self._lock:
            path = self._current(batch[0]["ts"][:10])
            new = not path.exists()
            with path.open("ab", buffering=0) as fh:
                start = fh.tell()
                try:
                    if fh.write(data) != len(data):
                        raise OSError(f"short write to {path}")
                    if fsync:
                        os.fsync(fh.fileno())
                        if new:  # the new file's directory entry too
                            dir_fd = os.open(path.parent, os.O_RDONLY)
                            try:
                                os.fsync(dir_fd)
                            finally:
                                os.close(dir_fd)
                except BaseException:
                    try:
                        fh.truncate(start)
                    except OSError:
                        self._path = None  # a torn tail stays there; later batches go to a new part
                        self._part += 1
                    raise


class Recorder:
    """Bounded queue + one writer thread. ``record`` never blocks and never raises."""

    def __init__(
        self,
        folder: Path,
        kind: str,
        queue_size: int,
        rotate_bytes: int,
        retention_days: float | None = None,
        max_total_mb: float | None = None,
    ) -> None:
        self.writer = PartWriter(folder, kind, rotate_bytes, retention_days, max_total_mb)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.written = self.dropped = 0
        self._thread = threading.Thread(
            target=self._write_forever, name=f"textclf-{kind}-writer", daemon=True
        )
        self._thread.start()

    def record(self, item: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, then stop the thread (the service's shutdown hook)."""
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("the %s writer did not drain in %.0f s", self.writer.root.name, timeout)
            return
        self._thread.join(timeout)

    def _write_forever(self) -> None:
        stop = False
        while not stop:
            batch = [self.queue.get()]
            while len(batch) < 1000 and batch[-1] is not _STOP:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _STOP:
                stop = True
                batch.pop()
                self.queue.task_done()
            try:
                if batch:
                    self.writer.write(batch)
                    self.written += len(batch)
            except Exception as err:  # noqa: BLE001 - a disk problem must never reach a request
                self.dropped += len(batch)
                log.warning("dropped %d %s records: %s", len(batch), self.writer.root.name, err)
            finally:
                for _ in batch:
                    self.queue.task_done()


def read_records(
    folder: Path, kind: str, since: str | None = None, bad: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Every record of ``kind`` under ``folder`` with ``ts >= since`` (ISO 8601), oldest partition first.

    A line that is not a JSON object with a ``ts`` (a torn tail, bad UTF-8) is skipped and logged, and
    its ``path:line`` appended to ``bad`` when given."""
    for day in sorted((Path(folder) / kind).glob("date=*")):
        if since and day.name.removeprefix("date=") < since[:10]:
            continue
        for path in sorted(day.glob("*.jsonl")):
            skipped = 0
            with path.open("rb") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except ValueError:  # a torn line; bad UTF-8 (UnicodeDecodeError is a ValueError)
                        item = None
                    if not isinstance(item, dict) or not isinstance(item.get("ts"), str):
                        skipped += 1
                        if bad is not None:
                            bad.append(f"{path}:{lineno}")
                    elif not since or item["ts"] >= since:
                        yield item
            if skipped:
                log.warning("skipped %d unreadable lines in %s", skipped, path)

"""The spill file: where records wait, on local disk, while the store cannot take them.

Records are appended as JSON lines, each append flushed and fsynced before it counts as done. Replay
never reads a file that is still being appended to: it first renames `<spill>` to `<spill>.replaying`
(appends then start a new `<spill>`), writes every record of the renamed file to the store, and only
then deletes it. A crash at any point leaves each record in one of the two files or in the store, and
a record found in both the store and a file is written again harmlessly: the store ignores request
ids it already holds. So a record is never lost and never counted twice.

Several worker processes may share one spill path: appends and the rename take an exclusive `flock`
on `<spill>.lock`, and one replay at a time holds `<spill>.replay.lock`. Everything here blocks; the
ledger calls it from worker threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from gateway.ledger.record import UsageRecord

log = logging.getLogger("llm_gateway.ledger")


class SpillFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.abspath(path))
        self.replaying = self.path.with_name(self.path.name + ".replaying")
        self.rejected = self.path.with_name(self.path.name + ".rejected")
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._replay_lock_path = self.path.with_name(self.path.name + ".replay.lock")

    def append(self, records: Sequence[UsageRecord]) -> None:
        """Durably add records for replay (raises OSError when the disk cannot take them)."""
        self._append(self.path, records)

    def reject(self, records: Sequence[UsageRecord]) -> None:
        """Keep records the store refused (for a person to look at), where replay never reads them."""
        self._append(self.rejected, records)

    def pending(self) -> bool:
        """Records are waiting for replay (cheap: two stat calls)."""
        return _non_empty(self.path) or self.replaying.exists()

    def claim(self) -> Replay | None:
        """Start a replay: the records to write, or None when there are none or another process is
        replaying. Call `done()` once all were stored, `release()` otherwise (they stay for next time)."""
        if not self.pending():  # the common case, and it leaves no lock files behind
            return None
        lock = _open_lock(self._replay_lock_path)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            return None
        try:
            with self._locked():
                # A `.replaying` left by an interrupted replay goes first; only then is `<spill>` taken.
                if not self.replaying.exists() and _non_empty(self.path):
                    os.replace(self.path, self.replaying)
                    _fsync_dir(self.path.parent)
            if not self.replaying.exists():
                os.close(lock)
                return None
            return Replay(self.replaying, open(self.replaying, "rb"), lock)  # closed by the Replay
        except BaseException:
            os.close(lock)
            raise

    def _append(self, path: Path, records: Sequence[UsageRecord]) -> None:
        data = b"".join(record.to_json() for record in records)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            created = not path.exists()
            with open(path, "ab") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if created:
                _fsync_dir(path.parent)  # the new name must survive a crash as well as the bytes

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = _open_lock(self._lock_path)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)  # closing releases the flock


class Replay:
    """A claimed `.replaying` file, read in batches."""

    def __init__(self, path: Path, file: IO[bytes], lock: int) -> None:
        self.path = path
        self._file = file
        self._lock = lock
        self.malformed = 0

    def read(self, limit: int) -> list[UsageRecord]:
        """Up to `limit` records; empty at the end. A line that is not a whole record (a crash tore
        the last append) is logged, counted and skipped."""
        records: list[UsageRecord] = []
        while len(records) < limit:
            line = self._file.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                records.append(UsageRecord.from_json(line))
            except ValueError as exc:
                self.malformed += 1
                log.error("ledger spill %s: skipped a line that is not a whole record (%s)", self.path, exc)
        return records

    def done(self) -> None:
        """Every record is in the store: forget the file."""
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
            _fsync_dir(self.path.parent)
        os.close(self._lock)

    def release(self) -> None:
        """Stop without deleting: the next replay starts this file again from its beginning."""
        self._file.close()
        os.close(self._lock)


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def _non_empty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

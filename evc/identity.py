"""Node identity that survives restarts: the boot epoch behind every idempotency key.

A record's key is (origin, epoch, seq). ``seq`` restarts at 1 on every boot, so the epoch must
never repeat: it is persisted and increased at each start, and it is never below the current
Unix time in seconds, so a node whose state file was lost (a re-flashed camera) still gets a
fresh epoch instead of colliding with keys the cloud has already stored (see sparkplug#422).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from evc.errors import ConfigError


def next_boot_epoch(state_dir: str | os.PathLike[str], node_id: str) -> int:
    """Return a boot epoch greater than any this node has used, and persist it."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{node_id}.epoch"
    previous = 0
    if path.exists():
        try:
            previous = int(path.read_text().strip() or 0)
        except ValueError as exc:
            raise ConfigError(f"boot epoch file {path} is corrupt: {exc}") from exc
    epoch = max(previous + 1, int(time.time()))
    _write_atomically(path, f"{epoch}\n")
    return epoch


def _write_atomically(path: Path, text: str) -> None:
    # Write, fsync, rename: a crash leaves either the old or the new file, never half of one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SequenceCounter:
    """Thread-safe sequence numbers 1, 2, 3, ... within one boot epoch."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        """Return the next sequence number."""
        with self._lock:
            self._value += 1
            return self._value

    @property
    def last(self) -> int:
        """The last number handed out (0 if none)."""
        return self._value

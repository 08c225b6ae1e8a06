"""An exclusive lock on a file, shared by every process and thread that manages the same jobs folder."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from backend.errors import UserError

if os.name == "nt":
    import msvcrt
else:
    import fcntl


@contextmanager
def file_lock(path: Path, timeout_s: float = 30.0) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing). The OS drops it if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+b") as f:
        while not _try_lock(f):
            if time.monotonic() > deadline:
                raise UserError(f"Another LORAID Studio process has held the jobs lock {path} for over "
                                f"{timeout_s:g} s; close the other app or wait, then try again.")
            time.sleep(0.01)
        try:
            yield
        finally:
            _unlock(f)


def _try_lock(f) -> bool:
    try:
        if os.name == "nt":
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlock(f) -> None:
    if os.name == "nt":
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)

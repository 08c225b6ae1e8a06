"""Starting detached processes, telling whether one still lives, and killing a whole process tree (POSIX/Windows)."""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

import psutil

IS_WINDOWS = os.name == "nt"
_CREATE_TIME_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class ProcessRef:
    """A process identity that survives pid reuse: the pid plus the time the process started."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> "ProcessRef | None":
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def is_alive(self) -> bool:
        """True when this very process runs (a zombie, or another process that got the pid, counts as gone)."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > _CREATE_TIME_TOLERANCE_S:
                return False
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True

    def to_dict(self) -> dict:
        return {"pid": self.pid, "create_time": self.create_time}

    @classmethod
    def from_dict(cls, data: dict) -> "ProcessRef":
        return cls(int(data["pid"]), float(data["create_time"]))


def detached_kwargs() -> dict:
    """Popen arguments for a process that outlives its parent (the job supervisor)."""
    if IS_WINDOWS:
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS | subprocess.CREATE_NO_WINDOW
        return {"creationflags": flags}
    return {"start_new_session": True}


def own_group_kwargs() -> dict:
    """Popen arguments for a process that leads its own process group, so its whole tree can be signalled."""
    if IS_WINDOWS:
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def descendants(pid: int) -> list[psutil.Process]:
    """The process's children, grandchildren, ... (empty when it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def terminate_tree(pid: int) -> list[psutil.Process]:
    """Ask the tree rooted at `pid` (a group leader) to terminate: SIGTERM to its process group and descendants.

    Returns the descendants found, so a later `kill_tree` also reaches those that left the group. On Windows there
    is no polite signal for a windowless process, so this only collects the tree.
    """
    tree = descendants(pid)
    if IS_WINDOWS:
        return tree
    _signal_group(pid, signal.SIGTERM)
    for process in tree:
        _signal_process(process, signal.SIGTERM)
    return tree


def kill_tree(pid: int, known_descendants: list[psutil.Process] | None = None) -> None:
    """Kill the tree rooted at `pid`: its process group (POSIX) or `taskkill /T /F` (Windows), and known descendants."""
    tree = list(known_descendants or []) + descendants(pid)
    if IS_WINDOWS:
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        for process in tree:
            _signal_process(process, None)
        return
    _signal_group(pid, signal.SIGKILL)
    for process in tree:
        _signal_process(process, signal.SIGKILL)


def kill_group_leftovers(pgid: int) -> None:
    """After a job's main process ended, kill what it left running in its process group (POSIX only)."""
    if not IS_WINDOWS:
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_process(process: psutil.Process, sig: int | None) -> None:
    """Signal one process; psutil checks it is still the same process (not a reused pid) first."""
    try:
        if sig is None:
            process.kill()
        else:
            process.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass

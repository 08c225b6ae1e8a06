"""Helpers for the job-runner tests: a manager on a temp folder, small child scripts, and polling with a deadline."""
from __future__ import annotations

import sys
import textwrap
import time
from types import SimpleNamespace
from pathlib import Path
from typing import Callable

import psutil
import pytest

from backend.jobs import Job, JobManager

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], object], timeout_s: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def wait_finished(manager: JobManager, job_id: str, timeout_s: float = 15.0) -> Job:
    wait_until(lambda: manager.get(job_id).is_finished, timeout_s, f"job {job_id} to finish")
    return manager.get(job_id)


def process_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a parent that does not reap it (it runs nothing and holds nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def manager(tmp_path: Path) -> JobManager:
    return JobManager(tmp_path / "jobs")


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str, str], list[str]]:
    """script(name, source) -> argv running that Python source as a child process."""

    def make(name: str, source: str) -> list[str]:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        return [sys.executable, str(path)]

    return make


@pytest.fixture
def jobtools():
    """The polling helpers above, for test modules (conftest is not importable under --import-mode=importlib)."""
    return SimpleNamespace(wait_until=wait_until, wait_finished=wait_finished, process_gone=process_gone,
                           project_root=PROJECT_ROOT)

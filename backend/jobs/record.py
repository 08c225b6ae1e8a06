"""A job as stored on disk: `<jobs dir>/<id>/job.json` plus the files the protocol names (log, events, stop flag).

Who writes `job.json`: the manager while the job is queued, when it launches it, and when it finds its supervisor
dead; the supervisor while the job runs (the child's pid) and when it ends (the result). Never both at once.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backend.fileio import atomic_write_json
from backend.jobs.protocol import EVENTS_FILE, LOG_FILE, STOP_FLAG_FILE

JOB_FILE = "job.json"
SUPERVISOR_FILE = "supervisor.json"  # the supervisor's pid and start time, written by the manager that launched it

STATUSES = ("queued", "running", "stopping", "succeeded", "failed", "stopped", "cancelled")
FINISHED_STATUSES = frozenset({"succeeded", "failed", "stopped", "cancelled"})
ACTIVE_STATUSES = frozenset({"running", "stopping"})
JOB_ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")


def new_job_id(now: float | None = None) -> str:
    """`20261123-142501-3f2a`: local start time (sorts by time) and a random suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


@dataclass
class Job:
    id: str
    kind: str
    title: str
    argv: list[str]
    settings: dict[str, Any]
    status: str
    created: float                      # unix time (seconds)
    started: float | None
    ended: float | None
    returncode: int | None
    dir: Path
    pid: int | None                     # the command's process id while it runs
    error: str | None
    env: dict[str, str] = field(default_factory=dict)   # overrides on top of the app's environment
    cwd: str = ""
    pid_create_time: float | None = None
    outcome: str | None = None          # a stopped run's last word: "stopped, saved at step N" / "nothing saved"
    device: str = ""                    # the GPU slot a pinned job holds alone ("" = not pinned; see manager.py)
    after: list[str] = field(default_factory=list)  # job ids that must succeed before this job starts

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def duration_s(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else time.time()) - self.started

    @property
    def log_path(self) -> Path:
        return self.dir / LOG_FILE

    @property
    def events_path(self) -> Path:
        return self.dir / EVENTS_FILE

    @property
    def stop_path(self) -> Path:
        return self.dir / STOP_FLAG_FILE

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("dir")
        if record["status"] == "stopping":  # derived from the stop flag, never stored
            record["status"] = "running"
        return record

    @classmethod
    def from_record(cls, job_dir: Path, record: dict[str, Any]) -> "Job":
        known = {name for name in cls.__dataclass_fields__ if name != "dir"}
        return cls(dir=job_dir, **{key: value for key, value in record.items() if key in known})


def load_job(job_dir: Path) -> Job:
    """Read `job.json`; a running job whose stop flag exists reads as 'stopping'."""
    record = json.loads((job_dir / JOB_FILE).read_text(encoding="utf-8"))
    job = Job.from_record(job_dir, record)
    if job.status == "running" and job.stop_path.exists():
        job.status = "stopping"
    return job


def save_job(job: Job) -> None:
    atomic_write_json(job.dir / JOB_FILE, job.to_record())

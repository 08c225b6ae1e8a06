"""The contract between a job process and the job runner: where it reports events and how it is asked to stop.

A job is any command started by `JobManager`. The runner gives it:

- the environment variable `LORAID_JOB_DIR`: the job's folder (also `PYTHONUNBUFFERED=1`, so prints reach the log
  at once). Everything the process writes to stdout/stderr lands in `<job dir>/log.txt`.
- the events file `<job dir>/events.jsonl`: one JSON object per line, `{"t": <unix time>, "event": <name>, ...}`,
  appended and flushed one line at a time, read by the app by byte offset.
- the stop flag `<job dir>/stop_requested`: a file that appears when the user presses Stop.

Stopping is cooperative first. A job checks `ctx.stop_requested()` at each step (it is one `stat`, cheap enough to
call every step); when it is true the job saves what it should (e.g. a checkpoint), emits `end`, and exits with
code 0. The runner reports such a job as "stopped". A job that does not exit within the grace period (10 s by
default) gets SIGTERM and then SIGKILL on its whole process group (POSIX) or `taskkill /T /F` (Windows); it is
reported as "stopped" too. A job that exits with a non-zero code is "failed", its log tail in the error.

A job whose steps are long says how long it needs: `ctx.report_needs(step_s=..., save_s=...)` writes
`<job dir>/needs.json` (and a `timing` event); the runner then waits `grace_needed(...)` = the larger of the grace
period and 1.5 × (one step + one save) + 10 s, so a Stop during a 40 s step still ends with a saved checkpoint. The
`end` event of a stopped job says `saved_step` (the step it saved, or null when it saved nothing).

Event vocabulary (extra fields are allowed; the UI reads these names):

    start       {total?: int, ...settings worth showing}     the job began its real work
    progress    {step: int, total: int}                      a progress bar's position
    step        {step: int, loss: float, lr: float, ...}     one optimisation step's numbers
    epoch       {epoch: int, ...}                            an epoch ended
    timing      {first_step_s: float, compile: bool}         the first step's time (compilation, warm-up)
    checkpoint  {path: str, step?: int}                      a file was saved
    sample      {path: str, step?: int, prompt?: str}        a sample image/video was written
    warning     {message: str}                               something the user should know, work goes on
    error       {message: str}                               the job is failing (one sentence)
    timing      {step_s: float, save_s: float}               how long one step / one save takes (see needs.json)
    end         {status: "succeeded" | "stopped" | "failed", saved_step?: int | None, ...}   the job's last word

Usage inside a job:

    ctx = JobContext.from_env()
    ctx.emit("start", total=steps)
    for step in range(1, steps + 1):
        if ctx.stop_requested():
            save(); ctx.emit("end", status="stopped", step=step - 1); return 0
        ...
        ctx.emit("step", step=step, loss=loss, lr=lr)

Outside a job (`LORAID_JOB_DIR` unset), `JobContext.from_env()` still works: events go nowhere, or to the file
given as `events_path`, and `stop_requested()` is False unless a `stop_path` file is given and exists.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from backend.fileio import atomic_write_json

JOB_DIR_ENV = "LORAID_JOB_DIR"
LOG_FILE = "log.txt"
EVENTS_FILE = "events.jsonl"
STOP_FLAG_FILE = "stop_requested"
NEEDS_FILE = "needs.json"
DEFAULT_GRACE_S = 10.0
NEEDS_FACTOR, NEEDS_MARGIN_S = 1.5, 10.0


def _jsonable(value: Any) -> Any:
    """Turn numbers that json cannot write (tensor scalars, numpy values, paths) into plain ones."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # tensors and numpy values, scalar or not
        return value.tolist()
    return str(value)


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: write them as strings so every reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JobContext:
    """A job's side of the protocol: `emit` events, ask `stop_requested()`."""

    def __init__(self, job_dir: Path | None = None, *, events_path: Path | None = None,
                 stop_path: Path | None = None) -> None:
        self.job_dir = Path(job_dir) if job_dir is not None else None
        if self.job_dir is not None:
            events_path = events_path or self.job_dir / EVENTS_FILE
            stop_path = stop_path or self.job_dir / STOP_FLAG_FILE
        self.events_path = Path(events_path) if events_path is not None else None
        self.stop_path = Path(stop_path) if stop_path is not None else None
        self._events: TextIO | None = None

    @classmethod
    def from_env(cls, *, events_path: Path | None = None, stop_path: Path | None = None) -> "JobContext":
        """The context of the running job, from `LORAID_JOB_DIR`; outside a job, the given files (or none)."""
        job_dir = os.environ.get(JOB_DIR_ENV)
        return cls(Path(job_dir) if job_dir else None, events_path=events_path, stop_path=stop_path)

    @property
    def in_job(self) -> bool:
        return self.job_dir is not None

    def emit(self, event: str, **fields: Any) -> None:
        """Append one event line `{"t": ..., "event": ..., **fields}` and flush it."""
        if self.events_path is None:
            return
        record = {"t": round(time.time(), 3), "event": event}
        record.update({key: _finite(value) for key, value in fields.items()})
        line = json.dumps(record, default=_jsonable, ensure_ascii=False)
        if self._events is None:
            self.events_path.parent.mkdir(parents=True, exist_ok=True)
            self._events = open(self.events_path, "a", encoding="utf-8")
        self._events.write(line + "\n")
        self._events.flush()

    def report_needs(self, step_s: float, save_s: float) -> None:
        """Tell the runner how long finishing a step and saving takes, so a Stop waits for it."""
        if self.job_dir is not None:
            atomic_write_json(self.job_dir / NEEDS_FILE, {"step_s": float(step_s), "save_s": float(save_s)})
        self.emit("timing", step_s=round(float(step_s), 3), save_s=round(float(save_s), 3))

    def stop_requested(self) -> bool:
        """True once the user asked this job to stop (the flag file exists)."""
        return self.stop_path is not None and self.stop_path.exists()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def __enter__(self) -> "JobContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def every_percent(ctx: JobContext, unit: str, **fields: Any) -> Callable[[int, int], None]:
    """A `progress(done, total)` callback for a job's loop: a `progress` event at each whole percent and at the end
    (what the Jobs table and the tabs' bars count), naming what is counted (`unit`) and any `fields`; and a line in
    the job's log at each tenth (`low-noise: 40/120 tensors (33%)`)."""
    printed = [-1]

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 100) == 0:
            ctx.emit("progress", step=done, total=total, unit=unit, **fields)
        tenth = done * 10 // max(1, total)
        if tenth > printed[0]:
            printed[0] = tenth
            part = f"{fields['part']}: " if fields.get("part") else ""
            print(f"{part}{done}/{total} {unit} ({done / max(1, total):.0%})", flush=True)

    return progress


# The runner's side of the stop flag. Its content says when the stop was asked and how long the job may take.

def write_stop_request(job_dir: Path, grace_s: float, requested_at: float | None = None) -> None:
    """Create (or update) the stop flag: the job should stop now; it is killed `grace_s` after `requested_at`."""
    record = {"requested_at": time.time() if requested_at is None else requested_at, "grace_s": float(grace_s)}
    atomic_write_json(Path(job_dir) / STOP_FLAG_FILE, record)


def grace_needed(job_dir: Path, grace_s: float) -> float:
    """The grace period the job gets: the one asked for, or longer when the job reported long steps or saves."""
    try:
        needs = json.loads((Path(job_dir) / NEEDS_FILE).read_text(encoding="utf-8"))
        needed = NEEDS_FACTOR * (float(needs["step_s"]) + float(needs["save_s"])) + NEEDS_MARGIN_S
    except (OSError, ValueError, KeyError, TypeError):
        return grace_s
    return max(grace_s, needed) if math.isfinite(needed) else grace_s


def stop_outcome(events_path: Path) -> str | None:
    """"stopped, saved at step N" / "stopped, nothing saved" from a stopped job's `end` event; None when it sent
    none (it was killed)."""
    try:
        with open(events_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "end" and "saved_step" in record:
            saved = record["saved_step"]
            return f"stopped, saved at step {saved}" if saved is not None else "stopped, nothing saved"
    return None


def read_stop_request(path: Path, first_seen: float) -> tuple[float, float]:
    """(requested_at, grace_s) from the flag file; a flag without readable content counts from when it was seen."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return float(record["requested_at"]), max(0.0, float(record["grace_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        return first_seen, DEFAULT_GRACE_S

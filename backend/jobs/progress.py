"""How far a job has got, from the events it writes (protocol.py): the newest `progress` or `step` event's
step / total, and an ETA from the rate between the oldest and the newest of those events read.

`read_progress(path)` reads only the events file's tail, so the Jobs table can show every running job's count
every second without reading a long training's whole event history.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 16_384
COUNTED = ("progress", "step")


@dataclass
class JobProgress:
    step: int = 0
    total: int | None = None
    eta_s: float | None = None  # the job's own estimate (training writes one), else from the rate
    first: tuple[float, int] | None = None  # (time, step) of the oldest counted event read
    last_t: float | None = None

    def apply(self, events: list[dict]) -> None:
        for event in events:
            if event.get("event") not in COUNTED or not isinstance(event.get("step"), int):
                continue
            t = event.get("t")
            self.step = event["step"]
            self.total = event["total"] if isinstance(event.get("total"), int) else self.total
            self.eta_s = event.get("eta_s") if isinstance(event.get("eta_s"), (int, float)) else None
            if isinstance(t, (int, float)):
                self.first = self.first or (t, self.step)
                self.last_t = t

    @property
    def counted(self) -> bool:
        return self.total is not None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    def eta(self) -> float | None:
        """Seconds left: the job's estimate, else the rate since the oldest event read; None before a rate exists."""
        if self.eta_s is not None:
            return float(self.eta_s)
        if not self.total or self.first is None or self.last_t is None:
            return None
        seconds, steps = self.last_t - self.first[0], self.step - self.first[1]
        if seconds <= 0 or steps <= 0:
            return None
        return max(0, self.total - self.step) * seconds / steps

    def line(self, finished: bool = False) -> str:
        """`12/48 (25%) · ETA 0:36`; empty while the job has counted nothing."""
        if not self.counted:
            return ""
        text = f"{self.step}/{self.total} ({self.fraction:.0%})"
        eta = None if finished else self.eta()
        return f"{text} · ETA {format_seconds(eta)}" if eta is not None else text


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def read_progress(events_path: Path, tail_bytes: int = TAIL_BYTES) -> JobProgress:
    """The progress in the newest `tail_bytes` of an events file (a missing file: nothing counted yet)."""
    progress = JobProgress()
    try:
        with open(events_path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - tail_bytes))
            data = handle.read()
    except OSError:
        return progress
    lines = data.split(b"\n")
    if len(data) < size:  # the first line may be cut
        lines = lines[1:]
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # a half-written last line, or a cut one
            continue
        if isinstance(event, dict):
            events.append(event)
    progress.apply(events)
    return progress


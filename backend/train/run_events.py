"""A training job's events (backend/jobs/protocol.py vocabulary) folded into what the Train tab shows.

`RunProgress.apply(events)` is fed the new events read by offset; it keeps the loss/lr points, the latest numbers
(step, total, it/s, ETA, VRAM), the checkpoints and resume states saved, the samples written, the warnings, and
the end status. `latest_state` is the folder `--resume` needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from backend.jobs.progress import format_seconds

MAX_POINTS = 5000  # a long run's chart keeps its newest points only


@dataclass
class RunProgress:
    total: int | None = None
    step: int = 0
    start_step: int = 0
    epoch: int = 0
    it_s: float | None = None
    eta_s: float | None = None
    vram: int | None = None
    points: list[dict] = field(default_factory=list)  # {"step", "loss", "avg_loss", "lr"}
    checkpoints: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)  # (path, caption)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    status: str | None = None  # the end event's status

    def apply(self, events: list[dict]) -> bool:
        """Fold new events in; True when anything changed."""
        for event in events:
            kind = event.get("event")
            if kind == "start":
                self.total = _int(event.get("total"), self.total)
                self.start_step = self.step = _int(event.get("step"), 0)
            elif kind == "step":
                self._step(event)
            elif kind == "epoch":
                self.epoch = _int(event.get("epoch"), self.epoch)
            elif kind == "checkpoint" and event.get("path"):
                (self.states if event.get("kind") == "state" else self.checkpoints).append(str(event["path"]))
            elif kind == "sample" and event.get("path"):
                caption = f"step {event['step']}" if event.get("step") is not None else ""
                if event.get("prompt"):
                    caption = f"{caption}: {event['prompt']}" if caption else str(event["prompt"])
                self.samples.append((str(event["path"]), caption))
            elif kind == "warning" and event.get("message"):
                self.warnings.append(str(event["message"]))
            elif kind == "error" and event.get("message"):
                self.error = str(event["message"])
            elif kind == "end":
                self.status = event.get("status")
                self.step = _int(event.get("step"), self.step)
        return bool(events)

    def _step(self, event: dict) -> None:
        self.step = _int(event.get("step"), self.step)
        self.total = _int(event.get("total"), self.total)
        self.epoch = _int(event.get("epoch"), self.epoch)
        self.it_s, self.eta_s, self.vram = _float(event.get("it_s")), _float(event.get("eta_s")), event.get("vram")
        self.points.append({"step": self.step, "loss": _float(event.get("loss")),
                            "avg_loss": _float(event.get("avg_loss")), "lr": _float(event.get("lr"))})
        del self.points[:-MAX_POINTS]

    @property
    def latest_state(self) -> str | None:
        return self.states[-1] if self.states else None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    def loss_rows(self) -> list[dict]:
        """Long format for a chart with one line per series: {"step", "value", "series"}."""
        rows = []
        for point in self.points:
            for series in ("loss", "avg_loss"):
                if point[series] is not None:
                    rows.append({"step": point["step"], "value": point[series], "series": series})
        return rows

    def lr_rows(self) -> list[dict]:
        return [{"step": p["step"], "lr": p["lr"]} for p in self.points if p["lr"] is not None]

    def summary(self) -> str:
        """`step 12/30 (40%) · 1.2 it/s · ETA 0:15 · VRAM 3.1 GiB · loss 0.1234`."""
        if self.total is None and not self.points:
            return "waiting for the trainer to start…"
        parts = [f"step {self.step}/{self.total or '?'} ({self.fraction:.0%})"]
        if self.start_step:
            parts.append(f"resumed at step {self.start_step}")
        if self.it_s:
            parts.append(f"{self.it_s:.2f} it/s")
        if self.eta_s is not None and self.status is None:
            parts.append(f"ETA {format_seconds(self.eta_s)}")
        parts.append(f"VRAM {self.vram / 2**30:.2f} GiB" if self.vram else "VRAM n/a (CPU)")
        if self.points and self.points[-1]["loss"] is not None:
            parts.append(f"loss {self.points[-1]['loss']:.4f}")
        return " · ".join(parts)


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None

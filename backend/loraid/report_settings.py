"""The interference report's options, declared once: `python -m backend blockmap --report ...`'s flags, the LORAID
tab's report widgets and the report job's argv all come from these fields (rules across fields in `rules`)."""
from __future__ import annotations

import sys
from pathlib import Path

from backend.config.field_checks import NameOf
from backend.config.settings import Settings, setting
from backend.system.devices import DEVICES, device_problem

REPORT_FILE = "report.txt"  # a report job writes its text here, in its job folder, for the page to show
FILES, MEASURE = "LoRA files", "Measure"


class InterferenceSettings(Settings):
    """Which LoRA files to compare, on which model, and how cross-talk is measured."""

    report: list[str] = setting([], label="LoRA files", group=FILES,
                                help="interference report over these LoRA files (two or more)")
    model: str | None = setting(None, label="Model", group=FILES,
                                help="model type (e.g. wan2.1-t2v-14b) or a transformer checkpoint file/folder; "
                                     "cross-talk is measured only on a checkpoint")
    multiplier: list[float] = setting([], label="Strengths", group=MEASURE,
                                      help="LoRA strength(s): one value applies to all, else one per LoRA "
                                           "(empty: 1.0 each)")
    probes: int = setting(3, label="Probe inputs", group=MEASURE, ge=1, le=64,
                          help="seeded probe inputs for function-space cross-talk (more: steadier numbers, slower)")
    device: str = setting("cpu", label="Device", group=MEASURE, choices=DEVICES,
                          help="where the model runs for function-space cross-talk")

    def rules(self, name_of: NameOf) -> dict[str, str]:
        problems = {}
        if len(self.report) < 2:
            problems["report"] = (f"{name_of('report')} names {len(self.report)} file(s); the interference report "
                                  "compares LoRAs, so give at least two files.")
        if len(self.multiplier) > 1 and len(self.multiplier) != len(self.report):
            problems["multiplier"] = (f"{name_of('multiplier')} has {len(self.multiplier)} values for "
                                      f"{len(self.report)} LoRAs; give one value for all or exactly one per LoRA.")
        problem = device_problem(self.device, name_of("device"))
        if problem:
            problems["device"] = problem
        return problems

    def multipliers(self) -> list[float]:
        values = list(self.multiplier) or [1.0]
        return values * len(self.report) if len(values) == 1 else values

    def job_argv(self) -> list[str]:
        """The command a report job runs."""
        return [sys.executable, "-m", "backend", "blockmap", *self.flag_arguments()]

    def job_title(self) -> str:
        return f"Interference report: {', '.join(Path(path).name for path in self.report)}"

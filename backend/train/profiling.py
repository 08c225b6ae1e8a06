"""A kernel table of chosen training steps, for finding where a step's time goes on a GPU.

    LORAID_PROFILE_STEPS=3:4 LORAID_PROFILE_OUT=kernels.txt accelerate launch -m backend.train ...

profiles steps 3 to 4 (1-based, inclusive) with torch.profiler (CPU and, when present, CUDA activity) and writes the
operators sorted by their own device time (CPU time without a GPU) to LORAID_PROFILE_OUT on the main process.
Nothing happens when LORAID_PROFILE_STEPS is not set.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from backend.errors import UserError
from backend.fileio import atomic_write_text


class StepProfiler:
    def __init__(self, steps: str | None, out: str | None, main_process: bool) -> None:
        self.profiler = None
        self.first = self.last = 0
        if steps and main_process:
            first, _, last = steps.partition(":")
            try:
                self.first, self.last = int(first), int(last or first)
            except ValueError:
                self.first = self.last = 0
            if not 1 <= self.first <= self.last:
                raise UserError(f"LORAID_PROFILE_STEPS={steps!r} is not a step range; give FIRST:LAST with "
                                f"1 <= FIRST <= LAST (e.g. 3:4), or one step number.")
            self.out = Path(out or "kernels.txt")

    @staticmethod
    def from_environment(main_process: bool) -> "StepProfiler":
        return StepProfiler(os.environ.get("LORAID_PROFILE_STEPS"), os.environ.get("LORAID_PROFILE_OUT"),
                            main_process)

    def before_step(self, step: int) -> None:
        """`step` is the 1-based number of the step about to run."""
        if self.first and step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()

    def after_step(self, step: int) -> None:
        if self.profiler is not None and step == self.last:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.profiler.__exit__(None, None, None)
            sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            table = self.profiler.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
            atomic_write_text(self.out, f"steps {self.first}-{self.last}\n{table}\n")
            self.profiler = None

"""The runner is told how long a stop can take: one step (one process), or a log interval of steps (several
processes see the stop flag together only at log intervals), plus a save."""
from __future__ import annotations

from backend.train.guards import UNKNOWN_SAVE_S, StopTiming


class Recorder:
    def __init__(self) -> None:
        self.reports = []

    def report_needs(self, step_s: float, save_s: float) -> None:
        self.reports.append((step_s, save_s))


def test_reports_grow_with_the_longest_step_and_save_only():
    ctx = Recorder()
    timing = StopTiming(ctx)
    timing.step_done(2.0)
    timing.step_done(2.1)  # not 25 % longer: no new report
    timing.step_done(40.0)
    timing.save_done(12.0)  # shorter than the 30 s assumed so far: the runner keeps the longer wait
    timing.save_done(50.0)
    assert ctx.reports == [(2.0, UNKNOWN_SAVE_S), (40.0, UNKNOWN_SAVE_S), (40.0, 50.0)]


def test_several_processes_wait_a_log_interval():
    ctx = Recorder()
    StopTiming(ctx, steps_between_checks=5).step_done(30.0)
    assert ctx.reports == [(150.0, UNKNOWN_SAVE_S)]

"""Two watchers of the training loop that keep what the user has.

`StopTiming` tells the job runner how long a step and a save take (the runner's grace period after Stop follows it,
backend/jobs/protocol.py), reporting again only when a longer step or save is seen.

`FiniteLoss` keeps NaN/inf out of the saved LoRA. Mode "stop": each loss is folded into a flag on the device (no host
sync per step); `check()` reads it at log points and before every save, and a non-finite loss ends the run with one
sentence before anything is written. Mode "skip": each loss is read at once (one sync per micro-batch, agreed by all
processes), a non-finite one skips its optimizer step, and the skipped steps are counted.
"""
from __future__ import annotations

import torch

from backend.errors import UserError

UNKNOWN_SAVE_S = 30.0  # assumed for a save before the first one was timed
REPORT_GROWTH = 1.25


class StopTiming:
    def __init__(self, ctx, steps_between_checks: int = 1) -> None:
        """`steps_between_checks`: how many steps may pass before the stop flag is seen (several processes agree on
        it only at log intervals), so the runner waits for that many steps."""
        self.ctx, self.steps_between_checks = ctx, max(1, steps_between_checks)
        self.step_s, self.save_s = 0.0, None
        self.reported: tuple[float, float] | None = None

    def step_done(self, seconds: float) -> None:
        self.step_s = max(self.step_s, seconds)
        self._report()

    def save_done(self, seconds: float) -> None:
        self.save_s = max(self.save_s or 0.0, seconds)
        self._report()

    def _report(self) -> None:
        now = (self.step_s, self.save_s if self.save_s is not None else UNKNOWN_SAVE_S)
        if self.reported is None or any(new > old * REPORT_GROWTH for new, old in zip(now, self.reported)):
            self.ctx.report_needs(now[0] * self.steps_between_checks, now[1])
            self.reported = now


class FiniteLoss:
    def __init__(self, mode: str, accelerator, learning_rate: float) -> None:
        self.mode, self.accelerator, self.learning_rate = mode, accelerator, learning_rate
        self.bad = torch.zeros((), dtype=torch.bool, device=accelerator.device)
        self.checked_step, self.skipped = 0, 0

    def observe(self, loss: torch.Tensor) -> bool:
        """Fold one micro-batch loss in; in skip mode return False (for every process) when it is not finite."""
        if self.mode == "skip":
            bad = (~torch.isfinite(loss.detach())).float().reshape(1)
            if self.accelerator.num_processes > 1:
                bad = self.accelerator.reduce(bad, "sum")
            return not bool(bad.item() > 0)
        self.bad |= ~torch.isfinite(loss.detach())
        return True

    def check(self, step: int) -> None:
        """Raise (one sentence) when a loss since the last check was NaN or infinite; nothing is saved then."""
        bad = self.bad.float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, "sum")
        if bool(bad.item() > 0):
            raise UserError(f"The loss became NaN or infinite between step {self.checked_step} and step {step}, so "
                            f"the run stopped without saving it; lower the learning rate ({self.learning_rate:g}), "
                            "check the starting weights and the caches, or set Non-finite loss to skip.")
        self.checked_step = step

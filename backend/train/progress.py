"""What a run tells the user at each log interval: a tqdm-style line, a `step` event, TensorBoard scalars."""
from __future__ import annotations

import time
from collections import deque

import torch
from tqdm import tqdm


def vram_bytes() -> int | None:
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


class Progress:
    """Reports at log intervals. The first step (torch.compile's compilation and other warm-up) is timed and reported
    on its own (`timing` event, a log line); it/s and the ETA count the steps after it."""

    def __init__(self, ctx, total_steps: int, start_step: int, log=print, logging_dir: str = "",
                 window: int = 20) -> None:
        self.ctx, self.total, self.start, self.log = ctx, total_steps, start_step, log
        self.started = time.perf_counter()
        self.timed_from = start_step  # steps before this one are not in it/s
        self.losses: deque[float] = deque(maxlen=window)
        self.writer = _tensorboard(logging_dir, log)

    def first_step(self, seconds: float, compiled: bool) -> None:
        """The first step took `seconds` (device synchronised); later rates are measured from here."""
        what = "includes torch.compile's compilation" if compiled else "includes warm-up"
        self.ctx.emit("timing", first_step_s=round(seconds, 3), compile=compiled)
        self.log(f"first step: {seconds:.2f} s ({what}; step times below exclude it)")
        self.started, self.timed_from = time.perf_counter(), self.start + 1

    def report(self, step: int, losses: list[float], lr: float, epoch: int) -> None:
        """The losses of the steps since the last report (the last one is `step`'s)."""
        self.losses.extend(losses)
        loss = losses[-1]
        elapsed = time.perf_counter() - self.started
        timed = step - self.timed_from
        it_s = timed / elapsed if elapsed > 0 and timed > 0 else 0.0
        eta_s = (self.total - step) / it_s if it_s > 0 else None
        avg = sum(self.losses) / len(self.losses)
        self.ctx.emit("step", step=step, total=self.total, epoch=epoch, loss=loss, avg_loss=avg, lr=lr,
                      it_s=round(it_s, 4), eta_s=None if eta_s is None else round(eta_s, 1), vram=vram_bytes())
        bar = tqdm.format_meter(step - self.start, self.total - self.start, elapsed, ncols=80, prefix="steps",
                                initial=0)
        self.log(f"{bar} step {step}/{self.total} loss={loss:.4f} avg={avg:.4f} lr={lr:.3g}")
        if self.writer is not None:
            first = step - len(losses) + 1
            for offset, value in enumerate(losses):
                self.writer.add_scalar("loss/current", value, first + offset)
            self.writer.add_scalar("loss/average", avg, step)
            self.writer.add_scalar("lr", lr, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard(logging_dir: str, log):
    if not logging_dir:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("warning: logging_dir is set but tensorboard is not installed; no TensorBoard scalars are written.")
        return None
    return SummaryWriter(logging_dir)

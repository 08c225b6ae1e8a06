"""What a run tells the user each step: a tqdm-style log line, a `step` event, TensorBoard scalars when installed."""
from __future__ import annotations

import time
from collections import deque

import torch
from tqdm import tqdm


def vram_bytes() -> int | None:
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


class Progress:
    def __init__(self, ctx, total_steps: int, start_step: int, log=print, logging_dir: str = "",
                 window: int = 20) -> None:
        self.ctx, self.total, self.start, self.log = ctx, total_steps, start_step, log
        self.started = time.perf_counter()
        self.losses: deque[float] = deque(maxlen=window)
        self.writer = _tensorboard(logging_dir, log)

    def step(self, step: int, loss: float, lr: float, epoch: int, every: int) -> None:
        self.losses.append(loss)
        if step % every and step != self.total:
            return
        elapsed = time.perf_counter() - self.started
        it_s = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta_s = (self.total - step) / it_s if it_s > 0 else None
        avg = sum(self.losses) / len(self.losses)
        self.ctx.emit("step", step=step, total=self.total, epoch=epoch, loss=loss, avg_loss=avg, lr=lr,
                      it_s=round(it_s, 4), eta_s=None if eta_s is None else round(eta_s, 1), vram=vram_bytes())
        bar = tqdm.format_meter(step - self.start, self.total - self.start, elapsed, ncols=80, prefix="steps",
                                initial=0)
        self.log(f"{bar} step {step}/{self.total} loss={loss:.4f} avg={avg:.4f} lr={lr:.3g}")
        if self.writer is not None:
            self.writer.add_scalar("loss/current", loss, step)
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

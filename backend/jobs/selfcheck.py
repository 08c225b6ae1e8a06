"""`python -m backend selfcheck`: a short built-in job that exercises the job runner end to end.

It prints the environment it runs in, draws a `\\r` progress bar with a line every few steps, emits progress
events, and honours a stop request at the next step ("stopped at step k", exit code 0).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

from backend.errors import UserError
from backend.jobs.protocol import JobContext

BAR_WIDTH = 24


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=30, help="number of steps (default 30)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds per step (default 0.2)")
    parser.add_argument("--line-every", type=int, default=5, help="print a log line every N steps (default 5)")


def progress_bar(step: int, total: int, elapsed_s: float) -> str:
    filled = BAR_WIDTH * step // total
    bar = "#" * filled + " " * (BAR_WIDTH - filled)
    rate = step / elapsed_s if elapsed_s > 0 else 0.0
    return f"selfcheck {100 * step // total:3d}%|{bar}| {step}/{total} [{elapsed_s:.1f}s, {rate:.1f} step/s]"


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1 (got {args.steps}).")
    if args.interval < 0 or args.line_every < 1:
        raise UserError("--interval must be 0 or more and --line-every at least 1.")
    from backend.system.monitor import status_line, system_status

    ctx = JobContext.from_env()
    print(f"selfcheck: Python {platform.python_version()} on {platform.system()} ({sys.executable})")
    print(f"selfcheck: {status_line(system_status())}")
    print(f"selfcheck: job folder {ctx.job_dir if ctx.in_job else '(none: not started as a job)'}")
    ctx.emit("start", total=args.steps)
    began = time.monotonic()
    for step in range(1, args.steps + 1):
        if ctx.stop_requested():
            done = step - 1
            print(f"\nselfcheck: stopped at step {done} of {args.steps}", flush=True)
            ctx.emit("end", status="stopped", step=done)
            return 0
        time.sleep(args.interval)
        line = f"\rselfcheck: step {step}/{args.steps} ok\n" if step % args.line_every == 0 and step < args.steps else ""
        sys.stdout.write(line + "\r" + progress_bar(step, args.steps, time.monotonic() - began))  # the bar stays last
        sys.stdout.flush()
        ctx.emit("progress", step=step, total=args.steps)
    print(f"\nselfcheck: finished {args.steps} steps in {time.monotonic() - began:.1f} s", flush=True)
    ctx.emit("end", status="succeeded", step=args.steps)
    ctx.close()
    return 0

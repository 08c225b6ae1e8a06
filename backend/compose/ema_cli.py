"""`python -m backend ema RUN_DIR_OR_FILES --sigma_rel 0.2 --out FILE [--beta B --beta2 B2] [--uniform]
[--space factors|delta]`: post-hoc EMA of a run's checkpoints (see backend/compose/ema*.py for the exact rules)."""
from __future__ import annotations

import argparse
from pathlib import Path

from backend.compose.ema import PRECISIONS, SPACES, post_hoc_ema
from backend.compose.output_names import check_output
from backend.jobs.protocol import JobContext


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_FILES",
                        help="a run folder (its *.safetensors, sub-folders included) or checkpoint files")
    parser.add_argument("--out", required=True, help="EMA LoRA file to write (.safetensors)")
    parser.add_argument("--sigma_rel", type=float, default=None,
                        help="power EMA width, 0 < σ_rel < 0.2887 (default 0.2 when no other rule is given)")
    parser.add_argument("--beta", type=float, default=None, help="beta EMA: decay at the second checkpoint")
    parser.add_argument("--beta2", type=float, default=None, help="beta EMA: decay at the last checkpoint "
                                                                  "(linear in between; default --beta)")
    parser.add_argument("--uniform", action="store_true", help="plain mean of the checkpoints")
    parser.add_argument("--space", default="factors", choices=SPACES,
                        help="factors: average stored tensors (fast); delta: average ΔW = B·A exactly and "
                             "re-factorize to the input rank by SVD (LoRA / LoCon)")
    parser.add_argument("--precision", default="same", choices=PRECISIONS, help="saved weight dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    inputs = [Path(p) for p in args.inputs]
    check_output(Path(args.out), args.overwrite, [p for p in inputs if p.is_file()], lora_output=True)
    ctx = JobContext.from_env()
    ctx.emit("start", inputs=args.inputs)
    result = post_hoc_ema(args.inputs, args.out, sigma_rel=args.sigma_rel, beta=args.beta, beta2=args.beta2,
                          uniform=args.uniform, space=args.space, precision=args.precision)
    for note in result.notes:
        print(note if note.startswith("warning:") else f"note: {note}")
        if note.startswith("warning:"):
            ctx.emit("warning", message=note[len("warning: "):])
    rule = f"power EMA, γ = {result.gamma:.4f}" if result.gamma is not None else result.method
    print(f"{rule}, {args.space} space:")
    for path, step, weight in zip(result.files, result.steps, result.weights):
        print(f"  step {step:>8}  weight {weight:.6f}  {path}")
    if result.truncation_error:
        worst = max(result.truncation_error, key=result.truncation_error.get)
        mean = sum(result.truncation_error.values()) / len(result.truncation_error)
        print(f"relative truncation error: mean {mean:.3e}, max {result.truncation_error[worst]:.3e} ({worst})")
    print(f"wrote {result.out}")
    ctx.emit("checkpoint", path=str(result.out))
    ctx.emit("end", status="succeeded")
    ctx.close()
    return 0

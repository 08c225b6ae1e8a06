"""`python -m backend merge --dit BASE --lora A B --multiplier 1.0 0.7 --out MERGED.safetensors`.

Wan2.2 A14B: `--dit_high_noise H --lora_high_noise ... --out_high_noise ...` merges the high-noise expert too (with
`--multiplier_high_noise`). Overlapping LoRAs are refused unless `--allow_overlap`. Progress goes to the job events.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from backend.compose.merge_dit import OUTPUT_DTYPES, MergeResult, merge_into_dit
from backend.compose.output_names import check_output
from backend.errors import UserError
from backend.jobs.protocol import JobContext
from backend.loraid.cli_args import add_multiplier_argument, resolve_multipliers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dit", required=True, help="base DiT checkpoint (.safetensors file or shard folder)")
    parser.add_argument("--lora", nargs="+", required=True, metavar="FILE", help="LoRA file(s) to fold in")
    add_multiplier_argument(parser)
    parser.add_argument("--out", required=True, help="merged checkpoint to write (.safetensors)")
    parser.add_argument("--dit_high_noise", default=None, help="Wan2.2 A14B: the high-noise expert checkpoint")
    parser.add_argument("--lora_high_noise", nargs="+", default=None, metavar="FILE",
                        help="LoRA file(s) for the high-noise expert")
    add_multiplier_argument(parser, "--multiplier_high_noise")
    parser.add_argument("--out_high_noise", default=None, help="merged high-noise checkpoint to write")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the weights still stream from disk)")
    parser.add_argument("--dtype", default="same", choices=list(OUTPUT_DTYPES),
                        help="output dtype of floating-point tensors (default: as in the base)")
    parser.add_argument("--allow_overlap", action="store_true", help="merge LoRAs that change the same weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _summary(result: MergeResult, label: str) -> str:
    loras = ", ".join(f"{r['file']}×{r['multiplier']:g}" for r in result.loras)
    return (f"{label}: wrote {result.out} ({result.tensors} tensors, {result.adapted_weights} adapted by {loras}) "
            f"in {result.seconds:.1f} s")


def _one(args, ctx: JobContext, dit, loras, multipliers, out, expert, label) -> MergeResult:
    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 100) == 0:
            ctx.emit("progress", step=done, total=total, part=label)

    result = merge_into_dit(dit, loras, resolve_multipliers(len(loras), multipliers), out, device=args.device,
                            dtype=args.dtype, allow_overlap=args.allow_overlap, expert=expert, progress=progress)
    for warning in result.warnings:
        print(f"warning: {warning}")
        ctx.emit("warning", message=warning)
    print(_summary(result, label))
    ctx.emit("checkpoint", path=str(result.out))
    return result


def run(args: argparse.Namespace) -> int:
    high = [args.dit_high_noise, args.lora_high_noise, args.out_high_noise]
    if any(high) and not all(high):
        raise UserError("For the high-noise expert give all of --dit_high_noise, --lora_high_noise and "
                        "--out_high_noise.")
    if args.out_high_noise and Path(args.out_high_noise).resolve() == Path(args.out).resolve():
        raise UserError("--out and --out_high_noise are the same file; give each expert its own output.")
    for dit, loras, out in ((args.dit, args.lora, args.out),
                            (args.dit_high_noise, args.lora_high_noise or [], args.out_high_noise)):
        if out:
            check_output(Path(out), args.overwrite, [Path(dit), *map(Path, loras)])
    ctx = JobContext.from_env()
    ctx.emit("start", dit=args.dit, loras=args.lora)
    expert = "low" if args.dit_high_noise else None
    _one(args, ctx, args.dit, args.lora, args.multiplier, args.out, expert, "low-noise" if expert else "merge")
    if args.dit_high_noise:
        _one(args, ctx, args.dit_high_noise, args.lora_high_noise, args.multiplier_high_noise, args.out_high_noise,
             "high", "high-noise")
    ctx.emit("end", status="succeeded")
    ctx.close()
    return 0

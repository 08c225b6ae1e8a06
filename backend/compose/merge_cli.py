"""`python -m backend merge --dit BASE --lora A B --multiplier 1.0 0.7 --out MERGED.safetensors`.

Wan2.2 A14B: `--dit_high_noise H --lora_high_noise ... --out_high_noise ...` merges the high-noise expert too (with
`--multiplier_high_noise`). Overlapping LoRAs are refused unless `--allow_overlap`. Progress goes to the job events.
`--config PRESET.json` runs a preset saved in the Merge tab; flags given beside it win.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from backend.compose.merge_dit import MergeResult, merge_into_dit
from backend.compose.output_names import check_output
from backend.compose.settings import MergeSettings
from backend.config.field_checks import checked
from backend.config.settings import add_setting_arguments
from backend.errors import UserError
from backend.jobs.protocol import JobContext, every_percent
from backend.loraid.cli_args import resolve_multipliers


PRESET_SETTINGS = MergeSettings  # `--config PRESET.json`: a preset saved in the app (backend/config/preset_cli.py)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, MergeSettings)


def _summary(result: MergeResult, label: str) -> str:
    loras = ", ".join(f"{r['file']}×{r['multiplier']:g}" for r in result.loras)
    return (f"{label}: wrote {result.out} ({result.tensors} tensors, {result.adapted_weights} adapted by {loras}) "
            f"in {result.seconds:.1f} s")


def _one(args, ctx: JobContext, dit, loras, multipliers, out, expert, label) -> MergeResult:
    result = merge_into_dit(dit, loras, resolve_multipliers(len(loras), multipliers), out, device=args.device,
                            dtype=args.dtype, allow_overlap=args.allow_overlap, expert=expert,
                            progress=every_percent(ctx, "tensors", part=label))
    for warning in result.warnings:
        print(f"warning: {warning}")
        ctx.emit("warning", message=warning)
    print(_summary(result, label))
    ctx.emit("checkpoint", path=str(result.out))
    return result


def run(args: argparse.Namespace) -> int:
    args = checked(MergeSettings, vars(args))  # one sentence naming the flag; cuda only where there is a GPU
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

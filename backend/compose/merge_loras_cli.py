"""`python -m backend merge-loras --lora A B --multiplier 1.0 0.7 --out AB.safetensors [--rank R]`.

Without --rank the merge is exact (ranks concatenated, LoRA / LoCon); with --rank the summed ΔW is resized by SVD
and the retained energy is printed per module.
`--config PRESET.json` runs a preset saved in the Merge tab (LoRAs into one); flags given beside it win.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from backend.compose.merge_loras import merge_loras
from backend.compose.output_names import check_output
from backend.compose.settings import MergeLorasSettings
from backend.config.field_checks import checked
from backend.config.settings import add_setting_arguments
from backend.jobs.protocol import JobContext, every_percent
from backend.loraid.cli_args import resolve_multipliers


PRESET_SETTINGS = MergeLorasSettings  # `--config PRESET.json`: a preset saved in the app (backend/config/preset_cli.py)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, MergeLorasSettings)


def run(args: argparse.Namespace) -> int:
    args = checked(MergeLorasSettings, vars(args))  # one sentence naming the flag
    check_output(Path(args.out), args.overwrite, [Path(p) for p in args.lora], lora_output=True)
    ctx = JobContext.from_env()
    ctx.emit("start", loras=args.lora)
    result = merge_loras(args.lora, resolve_multipliers(len(args.lora), args.multiplier), args.out, args.rank,
                         args.allow_overlap, args.precision, progress=every_percent(ctx, "modules"))
    for module, energy in result.energy.items():
        print(f"  {module}: rank {result.ranks[module]}, retained energy {energy:.6f}")
    how = "exact (ranks concatenated)" if result.method == "concat" else f"SVD to rank {args.rank}"
    print(f"wrote {result.out}: {len(result.ranks)} modules, {how}, from "
          f"{', '.join(r['file'] for r in result.loras)}")
    if result.energy:
        worst = min(result.energy, key=result.energy.get)
        print(f"lowest retained energy: {result.energy[worst]:.6f} in {worst}")
    ctx.emit("checkpoint", path=str(result.out))
    ctx.emit("end", status="succeeded")
    ctx.close()
    return 0

"""`python -m backend merge-loras --lora A B --multiplier 1.0 0.7 --out AB.safetensors [--rank R]`.

Without --rank the merge is exact (ranks concatenated, LoRA / LoCon); with --rank the summed ΔW is resized by SVD
and the retained energy is printed per module.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from backend.compose.merge_loras import merge_loras
from backend.compose.output_names import check_output
from backend.loraid.cli_args import add_multiplier_argument, resolve_multipliers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", nargs="+", required=True, metavar="FILE", help="LoRA files to merge (2 or more)")
    add_multiplier_argument(parser)
    parser.add_argument("--out", required=True, help="merged LoRA file to write (.safetensors)")
    parser.add_argument("--rank", type=int, default=None, help="resize by SVD to this rank (default: exact concat)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="saved weight dtype")
    parser.add_argument("--allow_overlap", action="store_true", help="merge LoRAs that change the same modules")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    check_output(Path(args.out), args.overwrite, [Path(p) for p in args.lora], lora_output=True)
    result = merge_loras(args.lora, resolve_multipliers(len(args.lora), args.multiplier), args.out, args.rank,
                         args.allow_overlap, args.precision)
    for module, energy in result.energy.items():
        print(f"  {module}: rank {result.ranks[module]}, retained energy {energy:.6f}")
    how = "exact (ranks concatenated)" if result.method == "concat" else f"SVD to rank {args.rank}"
    print(f"wrote {result.out}: {len(result.ranks)} modules, {how}, from "
          f"{', '.join(r['file'] for r in result.loras)}")
    if result.energy:
        worst = min(result.energy, key=result.energy.get)
        print(f"lowest retained energy: {result.energy[worst]:.6f} in {worst}")
    return 0

"""`python -m backend share --lora A B --amount 0.3 --out_dir DIR`: blend LoRAs only inside the modules they share
(each output keeps its own modules, ranks and allocation); block-disjoint LORAIDs: nothing changes and it says so."""
from __future__ import annotations

import argparse

from backend.compose.share import share_between


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", nargs="+", required=True, metavar="FILE", help="LoRA files (2 or more)")
    parser.add_argument("--amount", type=float, default=0.5,
                        help="0: unchanged; 1: each takes the mean of the shared module (default 0.5)")
    parser.add_argument("--out_dir", required=True, help="folder for the `<name>-shared.safetensors` files")


def run(args: argparse.Namespace) -> int:
    result = share_between(args.lora, args.amount, args.out_dir)
    print(result.message)
    for name, out in result.outputs.items():
        errors = result.truncation_error[name]
        worst = max(errors.values(), default=0.0)
        print(f"  {name} -> {out} ({len(errors)} blended modules, max relative truncation error {worst:.3e})")
    return 0

"""argparse helpers for LORAIDs and multipliers, in both forms users know from the seed.

`--loraid 1 2 3` and `--loraid 1 --loraid 2 --loraid 3` (mixed too) give [1, 2, 3]; repeats are dropped, first
occurrence kept. Multipliers: one value applies to every LoRA; otherwise there must be one per LoRA.
"""
from __future__ import annotations

import argparse
import math
import re
from typing import Iterable, Sequence

from backend.errors import UserError
from backend.loraid.allocation import MODULE_GROUPS


def flatten_appended(values: Iterable | None) -> list:
    """argparse `nargs="+", action="append"` gives [[1, 2], [3]]; flatten it (a plain value passes through)."""
    flat: list = []
    for item in values or []:
        if isinstance(item, (list, tuple)):
            flat.extend(item)
        else:
            flat.append(item)
    return flat


def _positive_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is not a LORAID; write whole numbers from 1, e.g. --loraid 1 2")
    if value < 1:
        raise argparse.ArgumentTypeError(f"LORAID {value} is not valid; IDs start at 1")
    return value


def add_loraid_arguments(parser: argparse.ArgumentParser, allocation_options: bool = True) -> None:
    """`--loraid ID...` (repeatable) and, with allocation_options, `--blocks_per_loraid K` and `--module_group_split`."""
    parser.add_argument("--loraid", type=_positive_id, nargs="+", action="append", metavar="ID", default=None,
                        help="LORAID(s): `--loraid 1 2 3` or `--loraid 1 --loraid 2`; repeats are ignored")
    if allocation_options:
        parser.add_argument("--blocks_per_loraid", type=int, default=None, metavar="K",
                            help="blocks each LORAID owns (1..block count); default 5 on real Wan models "
                                 "(6 IDs on 30 blocks, 8 on 40), block count // 4 on models under 20 blocks")
        parser.add_argument("--module_group_split", action="store_true",
                            help=f"finer units: count K in module groups ({', '.join(MODULE_GROUPS)}) "
                                 f"inside each block, so 3x more IDs fit")


def add_multiplier_argument(parser: argparse.ArgumentParser, flag: str = "--multiplier", help: str | None = None) -> None:
    parser.add_argument(flag, type=float, nargs="+", action="append", default=None, metavar="M",
                        help=help or "LoRA strength(s): one value applies to all, else one per LoRA (both forms "
                                     "accepted)")


def resolve_loraids(args: argparse.Namespace | Sequence | None) -> list[int]:
    """The IDs from `args.loraid` (or a list in either form), de-duplicated in order."""
    values = getattr(args, "loraid", args) if isinstance(args, argparse.Namespace) else args
    return list(dict.fromkeys(int(value) for value in flatten_appended(values)))


def resolve_multipliers(count: int, multipliers: Iterable[float] | None) -> list[float]:
    """None or [] -> 1.0 for all; one value -> that value for all; `count` values -> as given; else a UserError."""
    values = [float(value) for value in flatten_appended(multipliers)]
    if any(not math.isfinite(value) for value in values):
        raise UserError("A multiplier is NaN or infinite; give finite strengths such as 1.0 or 0.7.")
    if not values:
        return [1.0] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise UserError(f"{len(values)} multipliers were given for {count} LoRAs; give one value for all or "
                        f"exactly one per LoRA.")
    return values


def parse_block_list(text: str | Iterable[int]) -> list[int]:
    """"0-3, 8" or "0 1 2 3 8" (or ints) -> [0, 1, 2, 3, 8]; a malformed entry is a UserError."""
    if not isinstance(text, str):
        return sorted(set(int(value) for value in text))
    blocks: set[int] = set()
    for token in filter(None, re.split(r"[,\s]+", text.strip())):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", token)
        if not match:
            raise UserError(f"`{token}` is not a block number or range; write blocks like `0-3, 8`.")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise UserError(f"The block range `{token}` runs backwards; write it low-high, e.g. `{high}-{low}`.")
        blocks.update(range(low, high + 1))
    if not blocks:
        raise UserError("The block list is empty; write blocks like `0-3, 8`.")
    return sorted(blocks)

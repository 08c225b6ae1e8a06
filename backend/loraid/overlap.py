"""The overlap guard: LoRAs applied to the same transformer must not change the same weights unless the user says so.

A coverage is the set of dotted Wan module names a LoRA changes (`file_coverage.coverage_of_file`). Module level:
two LoRAs conflict when they share a module (their ΔW add up on the same weight). Block level: they conflict when
they touch a common block, even through different module groups (weights stay independent, but the block's
function is shaped by both). Call the guard once per transformer: a Wan2.2 A14B high-noise LoRA and a low-noise
LoRA never share weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Iterable, Mapping

from backend.adapters.keys import module_sort_key
from backend.errors import UserError
from backend.loraid.allocation import compact_ranges
from backend.loraid.module_names import blocks_of
from backend.models.names import block_index

LEVELS = ("module", "block")
MODULES_SHOWN = 3


@dataclass(frozen=True)
class Conflict:
    first: str
    second: str
    blocks: tuple[int, ...]  # blocks both touch (module level: blocks of the shared modules)
    modules: tuple[str, ...]  # module names both change (empty for a block-only conflict)

    def describe(self) -> str:
        parts = []
        if self.blocks:
            word = "block" if len(self.blocks) == 1 else "blocks"
            parts.append(f"{word} {compact_ranges(self.blocks)}")
        top = [m for m in self.modules if block_index(m) is None]
        if top:
            parts.append(f"top-level {', '.join(top)}")
        shown = ", ".join(self.modules[:MODULES_SHOWN])
        more = f", ... {len(self.modules)} in all" if len(self.modules) > MODULES_SHOWN else ""
        detail = f" (modules {shown}{more})" if self.modules else " (different modules inside them)"
        return f"{self.first} and {self.second} both change {' and '.join(parts)}{detail}"


def find_overlaps(coverages: Mapping[str, Iterable[str]], level: str = "module") -> list[Conflict]:
    """Every pair of LoRAs that overlaps at `level` ("module" or "block"), in the order given."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    sets = {label: set(modules) for label, modules in coverages.items()}
    conflicts = []
    for first, second in combinations(sets, 2):
        shared_modules = tuple(sorted(sets[first] & sets[second], key=module_sort_key))
        if level == "module":
            if shared_modules:
                conflicts.append(Conflict(first, second, tuple(sorted(blocks_of(shared_modules))), shared_modules))
            continue
        shared_blocks = tuple(sorted(blocks_of(sets[first]) & blocks_of(sets[second])))
        if shared_blocks or shared_modules:
            conflicts.append(Conflict(first, second, shared_blocks, shared_modules))
    return conflicts


def overlap_message(conflicts: list[Conflict], force_hint: str = "pass --allow_overlap to merge anyway") -> str:
    return "; ".join(conflict.describe() for conflict in conflicts) + f"; {force_hint}."


def guard(coverages: Mapping[str, Iterable[str]], allow_overlap: bool = False, level: str = "module",
          force_hint: str = "pass --allow_overlap to merge anyway") -> list[Conflict]:
    """Raise a UserError listing every conflict unless allow_overlap; returns the conflicts (for a warning)."""
    conflicts = find_overlaps(coverages, level)
    if conflicts and not allow_overlap:
        raise UserError(overlap_message(conflicts, force_hint))
    return conflicts


def guard_files(paths: Iterable, allow_overlap: bool = False, level: str = "module",
                force_hint: str = "pass --allow_overlap to merge anyway") -> list[Conflict]:
    """`guard` over LoRA files on disk (coverages read from their headers)."""
    from backend.loraid.file_coverage import coverages_of_files

    return guard(coverages_of_files(paths), allow_overlap, level, force_hint)

"""The block map as plain data: blocks × module kinds, one panel per expert, each cell naming who changes it.

Two maps share one shape. `allocation_map` shows which LORAID owns each cell of a model under an allocation table;
`files_map` shows which LoRA files change each cell, a cell with two or more owners being a conflict, plus the
block-level conflict list of `overlap.find_overlaps` per transformer. Renderers (the LORAID tab) only draw this.

Files are placed on the panel of the expert their header records; a file without an expert (or recorded "both")
applies to every panel, as in the interference report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from backend.loraid.allocation import Allocation, compact_ranges
from backend.loraid.module_names import owned_modules
from backend.loraid.overlap import Conflict, find_overlaps
from backend.models.names import BLOCK_LINEARS, block_index

OTHER_KIND = "other"  # in-block modules outside the default targets (norms, ...), shown only when a file has some
EXPERT_TITLES = {None: "transformer", "high": "high-noise expert", "low": "low-noise expert"}


@dataclass(frozen=True)
class Panel:
    """One transformer: `cells[block][kind index]` is the tuple of owners of that cell (empty = unowned)."""

    expert: str | None
    kinds: tuple[str, ...]
    cells: tuple[tuple[tuple[str, ...], ...], ...]

    @property
    def title(self) -> str:
        return EXPERT_TITLES.get(self.expert, str(self.expert))

    @property
    def num_blocks(self) -> int:
        return len(self.cells)

    def owners_of(self, block: int, kind: str) -> tuple[str, ...]:
        return self.cells[block][self.kinds.index(kind)]

    def conflict_cells(self) -> list[tuple[int, str]]:
        return [(block, kind) for block, row in enumerate(self.cells) for kind, owners in zip(self.kinds, row)
                if len(owners) > 1]


@dataclass(frozen=True)
class BlockMap:
    panels: tuple[Panel, ...]
    owners: tuple[str, ...]  # legend order
    conflicts: tuple[tuple[str | None, Conflict], ...] = ()  # (expert, conflict), block level
    notes: tuple[str, ...] = field(default=())

    def conflict_lines(self) -> list[str]:
        """"CONFLICT: a.safetensors and b.safetensors both change block 3 (...)" per conflict (per expert)."""
        several = len(self.panels) > 1
        return [f"CONFLICT{f' ({EXPERT_TITLES.get(expert, expert)})' if several else ''}: {conflict.describe()}."
                for expert, conflict in self.conflicts]


def panel_experts(experts: Sequence[str | None]) -> tuple[str | None, ...]:
    """("high", "low") for a two-expert model, (None,) for a single transformer."""
    return tuple(experts) if experts else (None,)


def _kind_of(module: str) -> str | None:
    """`blocks.3.self_attn.q` -> "self_attn.q"; None outside the blocks."""
    if block_index(module) is None:
        return None
    return module.split(".", 2)[2]


def _panel(expert: str | None, num_blocks: int, kinds: Sequence[str],
           owned: Mapping[str, Iterable[str]]) -> Panel:
    """owned: owner label -> dotted module names it changes in this transformer."""
    grid = [[[] for _ in kinds] for _ in range(num_blocks)]
    for owner, modules in owned.items():
        for module in modules:
            block, kind = block_index(module), _kind_of(module)
            if block is None or not 0 <= block < num_blocks:
                continue
            column = kinds.index(kind) if kind in kinds else kinds.index(OTHER_KIND) if OTHER_KIND in kinds else None
            if column is not None and owner not in grid[block][column]:
                grid[block][column].append(owner)
    return Panel(expert, tuple(kinds), tuple(tuple(tuple(cell) for cell in row) for row in grid))


def allocation_label(allocation: Allocation) -> str:
    return f"ID {allocation.loraid}"


def allocation_map(table: Sequence[Allocation], targets: Sequence[str] = BLOCK_LINEARS) -> BlockMap:
    """Which LORAID owns each cell, for an allocation table (all IDs of one model; `allocation.allocation_table`)."""
    if not table:
        raise ValueError("an allocation table has at least one ID")
    experts = [e for e in table[0].experts if e is not None]
    owned = {allocation_label(a): owned_modules(a, targets) for a in table}
    panels = tuple(_panel(expert, table[0].num_blocks, tuple(targets), owned) for expert in panel_experts(experts))
    notes = tuple(a.warning for a in table if a.warning)
    return BlockMap(panels, tuple(owned), notes=notes)


def coverage_map(coverages: Mapping[str, Iterable[str]], file_experts: Mapping[str, str | None], num_blocks: int,
                 experts: Sequence[str | None] = (), targets: Sequence[str] = BLOCK_LINEARS) -> BlockMap:
    """Which files change each cell; conflicts at block level per transformer (a file's expert picks its panel)."""
    coverages = {label: set(modules) for label, modules in coverages.items()}
    kinds = list(targets)
    if any(_kind_of(m) is not None and _kind_of(m) not in targets for mods in coverages.values() for m in mods):
        kinds.append(OTHER_KIND)
    notes = []
    for label, modules in coverages.items():
        outside = sorted({b for b in map(block_index, modules) if b is not None and b >= num_blocks})
        if outside:
            notes.append(f"{label} changes block{'s' if len(outside) > 1 else ''} {compact_ranges(outside)}, but this "
                         f"model has blocks 0-{num_blocks - 1}: it was trained on another model.")
        top = sorted(m for m in modules if block_index(m) is None)
        if top:
            notes.append(f"{label} also changes {len(top)} module(s) outside the blocks ({', '.join(top[:3])}).")
    panels, conflicts = [], []
    for expert in panel_experts(experts):
        here = {label: modules for label, modules in coverages.items()
                if expert is None or file_experts.get(label) in (None, "both", expert)}
        panels.append(_panel(expert, num_blocks, kinds, here))
        conflicts += [(expert, conflict) for conflict in find_overlaps(here, "block")]
    return BlockMap(tuple(panels), tuple(coverages), tuple(conflicts), tuple(notes))


def files_map(paths: Sequence[str | Path], num_blocks: int, experts: Sequence[str | None] = (),
              targets: Sequence[str] = BLOCK_LINEARS) -> BlockMap:
    """`coverage_map` of LoRA files on disk (coverages and experts read from their headers)."""
    from backend.loraid.file_coverage import allocation_of_file, coverages_of_files

    coverages = coverages_of_files(paths)
    file_experts = {}
    for label, path in zip(coverages, paths):
        allocation = allocation_of_file(path)
        file_experts[label] = allocation.expert if allocation is not None else None
    return coverage_map(coverages, file_experts, num_blocks, experts, targets)

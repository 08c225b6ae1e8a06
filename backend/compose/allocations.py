"""The LORAID allocation of a file composed from several LoRAs: the union of what each input owns."""
from __future__ import annotations

from typing import Sequence

from backend.adapters.formats import LoraFile
from backend.errors import UserError
from backend.loraid.allocation import MODULE_GROUPS, Allocation
from backend.loraid.file_coverage import allocation_from_header
from backend.loraid.module_names import blocks_of


def allocation_of(lora: LoraFile) -> Allocation | None:
    return allocation_from_header(lora.metadata, lora.modules)


def union_allocation(loras: Sequence[LoraFile]) -> Allocation | None:
    """An explicit allocation owning every unit any input owns (a file without a LORAID adds the blocks it covers);
    None when no input has a LORAID. Inputs recorded for different models or experts are a UserError."""
    allocations = [allocation_of(lora) for lora in loras]
    recorded = [a for a in allocations if a is not None]
    if not recorded:
        return None
    for attribute in ("num_blocks", "expert"):
        values = {getattr(a, attribute) for a in recorded}
        if len(values) > 1:
            raise UserError(f"The LoRAs' LORAID allocations disagree on {attribute.replace('_', ' ')} "
                            f"({', '.join(map(str, sorted(values, key=str)))}); they were made for different "
                            f"models or experts, so they cannot become one file.")
    units: set[tuple[int, str]] = set()
    for lora, allocation in zip(loras, allocations):
        if allocation is not None:
            units.update(allocation.owned_units())
        else:
            units.update((block, group) for block in blocks_of(lora.modules) for group in MODULE_GROUPS)
    blocks = tuple(sorted({block for block, _ in units}))
    whole = all((block, group) in units for block in blocks for group in MODULE_GROUPS)
    ordered = None if whole else tuple(sorted(units, key=lambda u: (u[0], MODULE_GROUPS.index(u[1]))))
    first = recorded[0]
    models = {a.model for a in recorded}
    return Allocation("explicit", None, blocks, first.num_blocks, first.expert, None, ordered,
                      first.model if len(models) == 1 else None)

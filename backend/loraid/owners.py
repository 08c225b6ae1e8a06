"""Who holds a LORAID slice in a workspace: runs training it right now (their reservation), then the registered
LoRA files that still exist. The LORAID tab's ID picker and capacity table and the Train tab's LORAID picker all
read it from here."""
from __future__ import annotations

from pathlib import Path

from backend.errors import UserError
from backend.loraid.allocation import Allocation
from backend.loraid.registry import LoraidRegistry
from backend.train.outputs import running_owners
from backend.workspace import Workspace


def slice_owners(workspace: Workspace, allocation: Allocation, folders: list[Path] | None = None,
                 registry: LoraidRegistry | None = None) -> list[str]:
    """Labels of the runs training an overlapping slice (in `folders`, default the workspace's loras/), then of
    the registered files owning part of it."""
    registry = registry or LoraidRegistry.for_workspace(workspace)
    files = [entry.name for entry in registry.owners(allocation) if registry.resolve(entry).is_file()]
    return [*running_owners(allocation, folders or [workspace.loras]), *files]


def taken_ids(workspace: Workspace, table: list[Allocation], folders: list[Path] | None = None) -> dict[int, list[str]]:
    """ID -> its owners, for the IDs of `table` that someone holds (an unreadable registry: none known)."""
    try:
        registry = LoraidRegistry.for_workspace(workspace)
        return {allocation.loraid: owners for allocation in table
                if (owners := slice_owners(workspace, allocation, folders, registry))}
    except UserError:
        return {}


def id_label(loraid: int, owners: list[str]) -> str:
    """An ID as its picker lists it: free, its one owner, or how many hold it (the capacity table lists them all),
    so a crowded slice does not stretch the label past the picker."""
    if not owners:
        return str(loraid)
    if len(owners) == 1:
        return f"{loraid} (taken by {owners[0]})"
    return f"{loraid} (taken by {len(owners)}: see the capacity table)"

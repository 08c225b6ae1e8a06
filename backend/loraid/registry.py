"""The workspace's LORAID registry (`loraid_registry.json`): which files own which slices of which model.

An entry is one LoRA file and the allocation its header records. Two slices collide when they are for the same
model (block count and, when both say it, model kind), touch a common expert (an unset expert matches any), and
share a (block, module group) unit. "Taken" and "free" are decided by that collision, not by the ID number alone,
so IDs computed with different `blocks_per_loraid` are compared by the blocks they really own.

`scan(loras_dir)` rebuilds the registry from the files' headers (`ss_loraid`, `loraid_allocation`); a file that
only states `ss_loraid` (older tools) is registered with the blocks it really covers and an unknown block count.
Writes are atomic and serialized by a lock file beside the registry.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backend.adapters.metadata import parse_metadata
from backend.errors import UserError
from backend.fileio import atomic_write_json
from backend.jobs.lock import file_lock
from backend.loraid.allocation import Allocation, allocation_table, compact_ranges
from backend.loraid.file_coverage import allocation_from_header, modules_from_canonical_keys, read_lora_header
from backend.workspace import Workspace

REGISTRY_VERSION = 1


@dataclass(frozen=True)
class RegistryEntry:
    file: str  # relative to the workspace root when inside it (POSIX separators), else absolute
    loraid: int | None
    allocation: dict[str, Any]  # Allocation.to_metadata()
    num_blocks_known: bool = True  # False for files that state only ss_loraid

    @property
    def parsed(self) -> Allocation:
        return Allocation.from_metadata(self.allocation, self.loraid)

    @property
    def name(self) -> str:
        return Path(self.file).name


def collides(a: Allocation, b: Allocation, b_num_blocks_known: bool = True) -> bool:
    """True when the two slices could change the same weights of the same model."""
    if b_num_blocks_known and a.num_blocks != b.num_blocks:
        return False
    if a.model and b.model and a.model != b.model:
        return False
    experts_a, experts_b = set(a.experts), set(b.experts)
    if None not in experts_a and None not in experts_b and not experts_a & experts_b:
        return False
    return bool(set(a.owned_units()) & set(b.owned_units()))


class LoraidRegistry:
    def __init__(self, path: str | Path, root: str | Path | None = None) -> None:
        self.path = Path(path)
        self.root = Path(root).resolve() if root is not None else self.path.parent.resolve()
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")

    @classmethod
    def for_workspace(cls, workspace: Workspace | str | Path) -> "LoraidRegistry":
        ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
        return cls(ws.loraid_registry, ws.root)

    # --- reading and writing ---------------------------------------------------------------------------------
    def entries(self) -> list[RegistryEntry]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [RegistryEntry(**item) for item in data["entries"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"The LORAID registry {self.path} is damaged ({exc}); rebuild it from the LoRA files with "
                            f"`python -m backend blockmap --workspace {self.root} --rescan`.") from None

    def _write(self, entries: list[RegistryEntry]) -> None:
        entries = sorted(entries, key=lambda e: (e.loraid is None, e.loraid or 0, e.file))
        atomic_write_json(self.path, {"version": REGISTRY_VERSION, "entries": [asdict(e) for e in entries]})

    def _key(self, file: str | Path) -> str:
        path = Path(file).expanduser().resolve()
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, entry: RegistryEntry) -> Path:
        path = Path(entry.file)
        return path if path.is_absolute() else self.root / path

    # --- changes ---------------------------------------------------------------------------------------------
    def register(self, file: str | Path, allocation: Allocation) -> RegistryEntry:
        """Record (or replace) the entry of `file`."""
        entry = RegistryEntry(self._key(file), allocation.loraid, allocation.to_metadata())
        with file_lock(self.lock_path):
            others = [e for e in self.entries() if e.file != entry.file]
            self._write(others + [entry])
        return entry

    def unregister(self, file: str | Path) -> bool:
        key = self._key(file)
        with file_lock(self.lock_path):
            entries = self.entries()
            kept = [e for e in entries if e.file != key]
            if len(kept) != len(entries):
                self._write(kept)
        return len(kept) != len(entries)

    def scan(self, loras_dir: str | Path) -> list[RegistryEntry]:
        """Rebuild from the `.safetensors` headers under `loras_dir`; entries outside it stay while their file exists.
        Files without a LORAID and unreadable files are left out; returns the entries found."""
        folder = Path(loras_dir).expanduser().resolve()
        if not folder.is_dir():
            raise UserError(f"The LoRA folder {folder} does not exist; pick the folder holding your LoRA files.")
        found = []
        for file in sorted(folder.rglob("*.safetensors")):
            entry = self._entry_from_file(file)
            if entry is not None:
                found.append(entry)
        with file_lock(self.lock_path):
            kept = [e for e in self.entries()
                    if not _inside(self.resolve(e), folder) and self.resolve(e).is_file()]
            self._write(kept + found)
        return found

    def _entry_from_file(self, file: Path) -> RegistryEntry | None:
        try:
            keys, metadata = read_lora_header(file)
            modules = modules_from_canonical_keys(keys)
            if modules is None:
                from backend.adapters.formats import load_lora

                modules = set(load_lora(file, allow_nonfinite=True).modules)
            allocation = allocation_from_header(metadata, modules)
        except UserError:
            return None
        if allocation is None:
            return None
        recorded = parse_metadata(metadata)["allocation"] is not None
        return RegistryEntry(self._key(file), allocation.loraid, allocation.to_metadata(), recorded)

    # --- questions -------------------------------------------------------------------------------------------
    def taken_ids(self, model: str | None = None, num_blocks: int | None = None) -> dict[int, list[str]]:
        """ID -> files recorded with it (for one model kind / block count when given; unknown ones match)."""
        taken: dict[int, list[str]] = {}
        for entry in self.entries():
            allocation = entry.parsed
            if entry.loraid is None:
                continue
            if model and allocation.model and allocation.model != model:
                continue
            if num_blocks is not None and entry.num_blocks_known and allocation.num_blocks != num_blocks:
                continue
            taken.setdefault(entry.loraid, []).append(entry.file)
        return dict(sorted(taken.items()))

    def owners(self, allocation: Allocation) -> list[RegistryEntry]:
        """Registered files whose slices collide with `allocation`."""
        return [e for e in self.entries() if collides(allocation, e.parsed, e.num_blocks_known)]

    def free_ids(self, num_blocks: int, blocks_per_loraid: int | None = None, expert: str | None = None,
                 module_group_split: bool = False, model: str | None = None) -> list[int]:
        """IDs of this layout whose slice no registered file touches."""
        entries = [(e.parsed, e.num_blocks_known) for e in self.entries()]
        return [a.loraid for a in allocation_table(num_blocks, blocks_per_loraid, expert, module_group_split, model)
                if not any(collides(a, other, known) for other, known in entries)]

    def check_before_training(self, allocation: Allocation) -> str | None:
        """A warning naming the files that already own part of this slice; None when it is free."""
        owners = self.owners(allocation)
        if not owners:
            return None
        described = []
        for entry in owners:
            shared = sorted({b for b, _ in set(allocation.owned_units()) & set(entry.parsed.owned_units())})
            label = f"LORAID {entry.loraid}" if entry.loraid is not None else "an explicit slice"
            described.append(f"{entry.file} ({label}, shares blocks {compact_ranges(shared)})")
        subject = f"LORAID {allocation.loraid}" if allocation.loraid is not None else "This block list"
        return (f"{subject} is already taken in this workspace by {'; '.join(described)}: training "
                f"it again makes LoRAs that overlap; pick a free ID or remove the old file.")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False

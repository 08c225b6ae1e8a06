"""The LoRAs of a generation: which files (`--lora FILE...`, `--loraid ID...` from the workspace registry), at which
strength, on which transformer, checked for overlap, then merged into the weights (fast) or hooked (live multipliers).

Multipliers follow the LORAID rule: one value for all, else one per item, where the items are the `--lora` files
followed by the `--loraid` IDs (an ID whose files cover both experts of an A14B pair shares its value). On an A14B
pair a file goes to the expert its allocation names, or to both when it names none.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.adapters.formats import LoraFile, load_lora
from backend.errors import UserError
from backend.generate.options import named
from backend.loraid import overlap
from backend.loraid.cli_args import resolve_multipliers
from backend.loraid.registry import LoraidRegistry
from backend.models.names import wan_to_diffusers
from backend.models.registry import EXPERTS


@dataclass
class PickedLora:
    path: Path
    multiplier: float
    loraid: int | None  # the ID it was picked by (None: named with --lora)
    file: LoraFile
    sha256: str

    @property
    def label(self) -> str:
        return f"LORAID {self.loraid} ({self.path.name})" if self.loraid is not None else self.path.name

    @property
    def expert(self) -> str | None:
        allocation = self.file.info.get("allocation") or {}
        expert = allocation.get("expert")
        return expert if expert in EXPERTS else None

    @property
    def file_loraid(self) -> int | None:
        """The LORAID the file was trained on (its header), whether it was picked by ID or by path."""
        allocation = self.file.info.get("allocation") or {}
        for found in (allocation.get("loraid"), self.file.info.get("loraid"), self.loraid):
            if isinstance(found, int) and not isinstance(found, bool):
                return found
        return None

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "multiplier": self.multiplier,
                "loraid": self.loraid if self.loraid is not None else self.file_loraid,
                "picked_by": "loraid" if self.loraid is not None else "file",
                "expert": self.expert, "algo": self.file.algo, "modules": len(self.file.modules)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files_of_loraid(registry: LoraidRegistry, loraid: int, model_kind: str | None) -> list[Path]:
    entries = [e for e in registry.entries() if e.loraid == loraid]
    if model_kind:
        entries = [e for e in entries if not e.parsed.model or e.parsed.model == model_kind] or entries
    if not entries:
        raise UserError(f"LORAID {loraid} is not in the workspace registry {registry.path}; train it, or give its "
                        f"file among the {named('lora')}.")
    return [registry.resolve(e) for e in entries]


def pick_loras(lora_files: list[str], loraids: list[int], multipliers: list[float] | None,
               workspace: Path | None, model_kind: str | None = None) -> list[PickedLora]:
    """Read every chosen file (missing or unreadable ones are a UserError) with its multiplier and hash."""
    items: list[tuple[list[Path], int | None]] = [([Path(f).expanduser()], None) for f in lora_files]
    if loraids:
        if workspace is None:
            raise UserError(f"{named('loraid')} pick LoRAs from a workspace registry; give the {named('workspace')} "
                            f"too.")
        registry = LoraidRegistry.for_workspace(workspace)
        items += [(_files_of_loraid(registry, loraid, model_kind), loraid) for loraid in loraids]
    values = resolve_multipliers(len(items), multipliers)
    picked = []
    for (paths, loraid), multiplier in zip(items, values):
        for path in paths:
            lora_file = load_lora(path)
            picked.append(PickedLora(path, multiplier, loraid, lora_file, file_sha256(path)))
    return picked


def by_transformer(picked: list[PickedLora], roles: list[str]) -> dict[str, list[PickedLora]]:
    """Role ("main", "high", "low") -> the LoRAs that go on that transformer."""
    placed: dict[str, list[PickedLora]] = {role: [] for role in roles}
    for lora in picked:
        targets = [lora.expert] if lora.expert in placed else roles
        for role in targets:
            placed[role].append(lora)
    return placed


def check_overlaps(placed: dict[str, list[PickedLora]], allow_overlap: bool) -> list[str]:
    """The overlap guard on each transformer; returns warnings (the conflicts allowed by --allow_overlap)."""
    warnings = []
    for role, loras in placed.items():
        coverages = {lora.label: lora.file.modules for lora in loras}
        for conflict in overlap.guard(coverages, allow_overlap):
            warnings.append(conflict.describe())
    return warnings


def _layer(model: torch.nn.Module, module_name: str, lora: PickedLora) -> torch.nn.Module:
    try:
        return model.get_submodule(wan_to_diffusers(module_name))
    except AttributeError:
        raise UserError(f"{lora.path.name} changes `{module_name}`, which this model does not have; the LoRA was "
                        f"trained for another model.") from None


@torch.no_grad()
def merge_into(model: torch.nn.Module, loras: list[PickedLora]) -> None:
    """Fast path: write W + multiplier·ΔW of every LoRA into the in-memory model (multiplier 0: untouched)."""
    from backend.adapters.merge import merged_weight_for_module

    for lora in loras:
        if lora.multiplier == 0.0:
            continue
        for module_name in lora.file.modules:
            layer = _layer(model, module_name, lora)
            merged = merged_weight_for_module(lora.file.parts(module_name), layer.weight, lora.multiplier,
                                              lora.file.flags, module_name=module_name)
            layer.weight.copy_(merged)


def hook_into(model: torch.nn.Module, loras: list[PickedLora]) -> list:
    """Live path: one injected AdapterNetwork per LoRA; change `network.multiplier` between runs."""
    from backend.adapters.network import AdapterNetwork

    networks = []
    for lora in loras:
        for module_name in lora.file.modules:
            _layer(model, module_name, lora)
        network = AdapterNetwork.from_weights(model, lora.file.tensors, lora.file.flags, multiplier=lora.multiplier,
                                              name=lora.label)
        networks.append(network.inject())
    return networks

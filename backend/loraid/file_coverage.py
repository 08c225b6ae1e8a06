"""What a LoRA file on disk covers (its dotted Wan module names) and which LORAID allocation its header records.

Canonical `lora_unet_*` files (ours, musubi's) are read from the safetensors header alone, so scanning a folder of
large LoRAs is fast; any other layout is read through `backend.adapters.formats.load_lora`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from backend.adapters.keys import CANONICAL_SUFFIXES, module_name_from_prefix
from backend.adapters.metadata import parse_metadata
from backend.errors import UserError
from backend.loraid.allocation import Allocation, allocate_explicit
from backend.loraid.module_names import blocks_of, group_of
from backend.models.checkpoint import read_safetensors_header


def read_lora_header(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """(tensor keys, header metadata) without reading any weight."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a LoRA file; pass the .safetensors file inside it.")
    if not path.is_file():
        raise UserError(f"The LoRA file {path} does not exist; check the path.")
    header, metadata = read_safetensors_header(path)
    return list(header), dict(metadata)


def modules_from_canonical_keys(keys: Iterable[str]) -> set[str] | None:
    """Dotted module names of canonical `lora_unet_<module>.<suffix>` keys; None when some key is in another layout."""
    modules = set()
    for key in keys:
        prefix, _, suffix = key.partition(".")
        if not prefix.startswith("lora_unet_") or suffix not in CANONICAL_SUFFIXES:
            return None
        modules.add(module_name_from_prefix(prefix))
    return modules


def coverage_of_file(path: str | Path) -> set[str]:
    """The dotted Wan module names a LoRA file changes (e.g. {"blocks.4.self_attn.q", ...})."""
    keys, _ = read_lora_header(path)
    modules = modules_from_canonical_keys(keys)
    if modules is None:
        from backend.adapters.formats import load_lora

        modules = set(load_lora(path, allow_nonfinite=True).modules)
    return modules


def coverages_of_files(paths: Iterable[str | Path]) -> dict[str, set[str]]:
    """label -> coverage; labels are file names, or full paths where two files share a name."""
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    labels = [p.name if names.count(p.name) == 1 else str(p) for p in paths]
    if len(set(labels)) != len(labels):
        duplicate = next(label for label in labels if labels.count(label) > 1)
        raise UserError(f"{duplicate} is listed twice; name each LoRA file once.")
    return {label: coverage_of_file(path) for label, path in zip(labels, paths)}


def allocation_from_header(metadata: Mapping[str, str], modules: Iterable[str]) -> Allocation | None:
    """The recorded allocation (`loraid_allocation`), else for a file that only states `ss_loraid` (older tools)
    an explicit allocation of the blocks it really covers; None for a file without a LORAID."""
    info = parse_metadata(metadata)
    if info["allocation"] is not None:
        return Allocation.from_metadata(info["allocation"], info["loraid"])
    if info["loraid"] is None:
        return None
    modules = list(modules)
    blocks = sorted(blocks_of(modules))
    if not blocks:
        return None
    groups = {group_of(name) for name in modules} - {None}
    return allocate_explicit(blocks, max(blocks) + 1, loraid=info["loraid"] if info["loraid"] >= 1 else None,
                             module_groups=sorted(groups) if groups else None)


def allocation_of_file(path: str | Path) -> Allocation | None:
    keys, metadata = read_lora_header(path)
    modules = modules_from_canonical_keys(keys)
    if modules is None:
        from backend.adapters.formats import load_lora

        modules = set(load_lora(path, allow_nonfinite=True).modules)
    return allocation_from_header(metadata, modules)

"""Safe sharing between LoRAs: blend only inside the modules they already share, never anywhere else.

For each file and each of its modules that another input also adapts, the new ΔW is
(1 − amount)·ΔW_own + amount·mean(ΔW of every input holding the module), re-factorized by truncated SVD to the
file's own rank and alpha (the relative truncation error is reported). Modules only one file holds are copied
bit for bit, and no file gains a module: every output stays inside its input's coverage, hence its allocation.
Block-disjoint LORAIDs share no module, so sharing changes nothing; then no file is written and the result says so.
LoRA / LoCon files only (DoRA's ΔW depends on the base weight; LoHa / LoKr would change algorithm).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from backend.adapters.formats import LoraFile, load_lora, save_lora
from backend.adapters.merge import delta_for_module
from backend.compose.lowrank import refactor
from backend.compose.merge_loras import delta_shape
from backend.compose.provenance import as_json, stored_precision
from backend.errors import UserError
from backend.models.names import lora_key_prefix

SHARE_KEY = "loraid_studio.share"
NOTHING_SHARED = ("The LoRAs share no module (their LORAIDs are block-disjoint), so sharing changes nothing; "
                  "no file was written.")


@dataclass
class ShareResult:
    changed: bool
    message: str
    outputs: dict[str, Path] = field(default_factory=dict)  # input file name -> written file
    shared_modules: list[str] = field(default_factory=list)
    truncation_error: dict[str, dict[str, float]] = field(default_factory=dict)  # file -> module -> error


def _check_lora(lora: LoraFile) -> None:
    if any(algo not in ("lora", "locon") for algo in lora.module_algos.values()) or lora.flags.get("use_dora"):
        raise UserError(f"{lora.path.name} is a {lora.algo} file; sharing blends LoRA / LoCon files only, since it "
                        f"re-factorizes ΔW into the file's own LoRA factors.")


def _delta(lora: LoraFile, module: str) -> torch.Tensor:
    parts = lora.parts(module)
    return delta_for_module(parts, torch.zeros(delta_shape(lora, module, parts)), 1.0, lora.flags,
                            module_name=module).double()


def share_between(lora_paths: Sequence[str | Path], amount: float, out_dir: str | Path) -> ShareResult:
    """Blend the LoRAs inside their shared modules by `amount` (0: unchanged, 1: each takes the shared mean)."""
    if not 0.0 <= amount <= 1.0:
        raise UserError(f"--amount must be between 0 and 1, got {amount}.")
    if len(lora_paths) < 2:
        raise UserError("Sharing needs at least two LoRA files.")
    loras = [load_lora(path) for path in lora_paths]
    for lora in loras:
        _check_lora(lora)
    holders: dict[str, list[LoraFile]] = {}
    for lora in loras:
        for module in lora.modules:
            holders.setdefault(module, []).append(lora)
    shared = sorted(m for m, owners in holders.items() if len(owners) > 1)
    if not shared:
        return ShareResult(False, NOTHING_SHARED)
    out_dir = Path(out_dir)
    result = ShareResult(True, "", shared_modules=shared)
    for lora in loras:
        tensors = dict(lora.tensors)
        errors = {}
        for module in (m for m in lora.modules if m in shared):
            mean = sum(_delta(owner, module) for owner in holders[module]) / len(holders[module])
            blended = (1.0 - amount) * _delta(lora, module) + amount * mean
            rank, alpha = lora.ranks[module], lora.alphas[module]
            factors = refactor(blended, rank, alpha / rank, pad=True)
            prefix = lora_key_prefix(module)
            tensors[f"{prefix}.lora_down.weight"], tensors[f"{prefix}.lora_up.weight"] = factors.down, factors.up
            errors[module] = factors.relative_error
        metadata = dict(lora.metadata)
        metadata[SHARE_KEY] = as_json({"amount": amount, "with": [o.path.name for o in loras if o is not lora],
                                       "modules": sorted(errors)})
        out = out_dir / f"{lora.path.stem}-shared.safetensors"
        save_lora(out, tensors, metadata, stored_precision(lora))
        result.outputs[lora.path.name] = out
        result.truncation_error[lora.path.name] = errors
    touched = {name: len(errors) for name, errors in result.truncation_error.items()}
    result.message = (f"Blended {len(shared)} shared module(s) at amount {amount:g} "
                      f"({', '.join(f'{n}: {c}' for n, c in touched.items())}); every other module is unchanged.")
    return result

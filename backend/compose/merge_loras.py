"""Merge several LoRA files into one LoRA file: exactly by concatenating ranks, or resized by SVD to a chosen rank.

Exact (LoRA / LoCon): per module, up = [m1·s1·B1 | m2·s2·B2 | ...], down = [A1; A2; ...], alpha = the summed rank
(scale 1), so up·down = Σ mi·si·Bi·Ai: the merged file reproduces the sum of the inputs exactly, in any tool.
Resized (LoRA / LoCon / LoHa / LoKr on Linear layers): ΔW = Σ mi·ΔWi per module, truncated SVD to `rank`
(alpha = rank), with the retained energy Σσ²(kept) / Σσ²(all) reported per module. DoRA is refused either way: its
ΔW depends on the base weight, so it cannot be summed without the model (merge it into the DiT instead).
The output covers exactly the union of the inputs' modules; its allocation is the union of theirs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from backend.adapters.deltas import lokr_half
from backend.adapters.formats import LoraFile, load_lora, save_lora
from backend.adapters.keys import module_sort_key
from backend.adapters.merge import delta_for_module
from backend.adapters.metadata import build_metadata
from backend.compose.allocations import union_allocation
from backend.compose.lowrank import refactor
from backend.compose.provenance import MERGE_KEY, MERGED_LORAIDS_KEY, lora_record, loraids_of
from backend.errors import UserError
from backend.loraid.overlap import guard_files
from backend.models.names import lora_key_prefix

Parts = dict[str, torch.Tensor]


@dataclass
class LoraMergeResult:
    out: Path
    method: str  # concat | svd
    ranks: dict[str, int]
    energy: dict[str, float] = field(default_factory=dict)  # svd only: retained energy per module
    loras: list[dict] = field(default_factory=list)


def _refuse_dora(lora: LoraFile, module: str, parts: Parts) -> None:
    if "dora_scale" in parts:
        raise UserError(f"{lora.path.name} is a DoRA file: its ΔW depends on the base weight, so it cannot be added "
                        f"to other LoRAs without the model; merge it into the DiT with `merge` instead.")


def _contributors(loras: Sequence[LoraFile], multipliers: Sequence[float]) -> dict[str, list[tuple]]:
    """module -> [(lora, multiplier, parts)] for every LoRA holding it, modules in model order."""
    by_module: dict[str, list[tuple]] = {}
    for lora, multiplier in zip(loras, multipliers):
        for module in lora.modules:
            parts = lora.parts(module)
            _refuse_dora(lora, module, parts)
            by_module.setdefault(module, []).append((lora, float(multiplier), parts))
    return {module: by_module[module] for module in sorted(by_module, key=module_sort_key)}


def concat_module(contributors: Sequence[tuple]) -> Parts:
    """Exact canonical tensors of Σ m·s·B·A for one module (LoRA / LoCon inputs)."""
    ups, downs = [], []
    for lora, multiplier, parts in contributors:
        if "lora_down.weight" not in parts:
            from backend.compose.settings import MergeLorasSettings  # the Merge tab shows this job's sentence

            raise UserError(f"{lora.path.name} is a {lora.algo} file; exact concatenation works for LoRA / LoCon "
                            f"only, so set {MergeLorasSettings.named('rank')} to merge by SVD.")
        down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
        scale = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
        ups.append(up * (multiplier * scale))
        downs.append(down)
    if len({tuple(d.shape[1:]) for d in downs}) > 1 or len({u.shape[0] for u in ups}) > 1:
        raise UserError(f"{contributors[0][0].path.name} and {contributors[1][0].path.name} adapt a module with "
                        f"different shapes; they were trained for different models.")
    down, up = torch.cat(downs, 0), torch.cat(ups, 1)
    return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(down.shape[0]))}


def delta_shape(lora: LoraFile, module: str, parts: Parts) -> tuple[int, ...]:
    """The weight shape a module's ΔW has, from its factors (LoHa / LoKr: Linear layers only)."""
    if "lora_down.weight" in parts:
        return (parts["lora_up.weight"].shape[0], *parts["lora_down.weight"].shape[1:])
    if "hada_w1_a" in parts and parts["hada_w1_b"].dim() == 2:
        return (parts["hada_w1_a"].shape[0], parts["hada_w1_b"].shape[1])
    halves = [lokr_half(parts.get(f"lokr_w{i}"), parts.get(f"lokr_w{i}_a"), parts.get(f"lokr_w{i}_b")) if
              any(k.startswith(f"lokr_w{i}") for k in parts) else None for i in (1, 2)]
    if all(h is not None and h.dim() == 2 for h in halves) and parts.get("lokr_w2_b", torch.empty(0, 0)).dim() == 2:
        return (halves[0].shape[0] * halves[1].shape[0], halves[0].shape[1] * halves[1].shape[1])
    raise UserError(f"{lora.path.name}: `{lora_key_prefix(module)}` is a {lora.module_algos[module]} convolution "
                    f"adapter, whose weight shape the file alone does not give; merge it into the DiT instead.")


def svd_module(contributors: Sequence[tuple], module: str, rank: int) -> tuple[Parts, float]:
    """Canonical LoRA tensors of the best rank-`rank` approximation of Σ m·ΔW, and the retained energy."""
    total, shape = None, None
    for lora, multiplier, parts in contributors:
        this_shape = delta_shape(lora, module, parts)
        if shape is not None and this_shape != shape:
            raise UserError(f"{lora.path.name} adapts `{module}` with shape {this_shape}, another input with {shape}; "
                            f"they were trained for different models.")
        shape = this_shape
        delta = delta_for_module(parts, torch.zeros(shape), multiplier, lora.flags, module_name=module)
        total = delta if total is None else total + delta
    factors = refactor(total, rank)
    kept = factors.down.shape[0]
    return {"lora_down.weight": factors.down, "lora_up.weight": factors.up,
            "alpha": torch.tensor(float(kept))}, factors.energy


def merge_loras(lora_paths: Sequence[str | Path], multipliers: Sequence[float], out: str | Path,
                rank: int | None = None, allow_overlap: bool = False, precision: str = "fp32",
                progress: Callable[[int, int], None] | None = None) -> LoraMergeResult:
    """Write one LoRA file equal to Σ multiplier·LoRA (exact concatenation, or SVD to `rank` when given);
    `progress(done, total)` hears of each module merged."""
    if len(lora_paths) < 2:
        raise UserError("Merging LoRAs needs at least two files; pass them with --lora.")
    if len(multipliers) != len(lora_paths):
        raise UserError(f"{len(multipliers)} multipliers for {len(lora_paths)} LoRAs; give one per LoRA.")
    if rank is not None and rank < 1:
        raise UserError(f"--rank must be a whole number of at least 1, got {rank}.")
    guard_files(lora_paths, allow_overlap=allow_overlap)
    loras = [load_lora(path) for path in lora_paths]
    contributors = _contributors(loras, multipliers)
    tensors: dict[str, torch.Tensor] = {}
    ranks, energy = {}, {}
    for done, (module, group) in enumerate(contributors.items(), 1):
        if progress:
            progress(done - 1, len(contributors))
        if rank is None:
            parts = concat_module(group)
        else:
            parts, energy[module] = svd_module(group, module, rank)
        ranks[module] = parts["lora_down.weight"].shape[0]
        tensors.update({f"{lora_key_prefix(module)}.{suffix}": value for suffix, value in parts.items()})
    if progress:
        progress(len(contributors), len(contributors))
    method = "concat" if rank is None else "svd"
    records = [lora_record(lora, m) for lora, m in zip(loras, multipliers)]
    allocation = union_allocation(loras)
    algo = "locon" if any(p.dim() > 2 for k, p in tensors.items() if k.endswith("lora_down.weight")) else "lora"
    top_rank = max(ranks.values())
    metadata = build_metadata(
        algo, top_rank, float(top_rank), [], {"use_rslora": False, "use_dora": False}, loras[0].info["base_model"],
        allocation=allocation.to_metadata() if allocation else None, title=Path(out).stem,
        extra={MERGE_KEY: {"method": method, "rank": rank, "loras": records},
               MERGED_LORAIDS_KEY: loraids_of(records)})
    save_lora(out, tensors, metadata, precision)
    return LoraMergeResult(Path(out), method, ranks, energy, records)

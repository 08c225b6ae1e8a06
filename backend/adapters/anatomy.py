"""What the canonical tensors of one adapter module are: its algorithm, rank and scale (ComfyUI's reading of them)."""
from __future__ import annotations

from typing import Mapping

import torch

from backend.adapters.deltas import is_input_axis_scale
from backend.adapters.keys import split_canonical_key
from backend.errors import UserError

Parts = Mapping[str, torch.Tensor]  # suffix -> tensor of one module, e.g. {"lora_down.weight": ..., "alpha": ...}


def group_by_prefix(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, suffix = split_canonical_key(key)
        groups.setdefault(prefix, {})[suffix] = value
    return groups


def module_family(parts: Parts) -> str:
    """"lora" (LoRA, LoCon and DoRA share keys), "loha" or "lokr"; a module mixing them is a UserError by the caller."""
    families = {"loha" if s.startswith("hada_") else "lokr" if s.startswith("lokr_") else "lora"
                for s in parts if s not in ("alpha", "dora_scale")}
    return families.pop() if len(families) == 1 else "+".join(sorted(families)) or "none"


def module_algo(parts: Parts) -> str:
    """lora | locon (LoRA on a convolution) | dora | loha | lokr."""
    family = module_family(parts)
    if family != "lora":
        return family
    if "dora_scale" in parts:
        return "dora"
    return "locon" if parts["lora_down.weight"].dim() > 2 else "lora"


def module_rank(parts: Parts) -> int | None:
    """The `r` of alpha/r: rows of lora_down / hada_w1_b; for LoKr the rows of a decomposed factor, None when both
    Kronecker factors are full (then the scale is 1, as in ComfyUI and LyCORIS)."""
    family = module_family(parts)
    if family == "lora":
        return int(parts["lora_down.weight"].shape[0])
    if family == "loha":
        return int(parts["hada_w1_b"].shape[0])
    for name in ("lokr_w2_b", "lokr_w1_b"):
        if name in parts:
            return int(parts[name].shape[0])
    return None


def module_alpha(parts: Parts) -> float:
    return float(parts["alpha"].float().item())


def module_scale(parts: Parts) -> float:
    rank = module_rank(parts)
    return module_alpha(parts) / rank if rank else 1.0


def check_module(prefix: str, parts: Parts) -> None:
    """A UserError naming the module when its tensors do not form one complete adapter of one algorithm."""
    family = module_family(parts)
    if family == "lora":
        needed = ["lora_down.weight", "lora_up.weight"]
    elif family == "loha":
        needed = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]
    elif family == "lokr":
        needed = [name for side in ("1", "2") for name in
                  ([f"lokr_w{side}"] if f"lokr_w{side}" in parts else [f"lokr_w{side}_a", f"lokr_w{side}_b"])]
    else:
        raise UserError(f"The LoRA module `{prefix}` mixes tensors of different algorithms ({family}) or has only "
                        f"{sorted(parts)}; the file is damaged.")
    missing = [name for name in needed + ["alpha"] if name not in parts]
    if missing:
        raise UserError(f"The LoRA module `{prefix}` lacks {', '.join(missing)}; the file is incomplete or damaged.")
    if parts["alpha"].numel() != 1:
        raise UserError(f"The alpha of `{prefix}` has {parts['alpha'].numel()} values instead of one; "
                        f"the file is damaged.")
    if family == "lora" and parts["lora_up.weight"].shape[1] != parts["lora_down.weight"].shape[0]:
        raise UserError(f"The LoRA module `{prefix}` has lora_down rank {parts['lora_down.weight'].shape[0]} but "
                        f"lora_up rank {parts['lora_up.weight'].shape[1]}; the file is damaged.")
    if "dora_scale" in parts and family == "lora":
        scale, down = parts["dora_scale"], parts["lora_down.weight"]
        axis, wanted = (("input columns", down.shape[1]) if is_input_axis_scale(scale)
                        else ("output rows", parts["lora_up.weight"].shape[0]))
        if scale.numel() != wanted:
            raise UserError(f"The DoRA magnitude of `{prefix}` has {scale.numel()} values for {wanted} {axis}; "
                            f"the file is damaged.")

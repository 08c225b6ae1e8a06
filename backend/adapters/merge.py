"""Folding adapters into layer weights and back, and the per-module merge math for canonical file tensors.

Merging an adapter writes W + multiplier·ΔW into its layer (computed in float32, cast once to the layer's dtype) and
stops the adapter's forward contribution. The first merge into a layer keeps a copy of its weight (on the CPU), so
unmerging is exact: the copy is restored and the adapters still merged into that layer are re-applied in their
order. Multiplier 0 changes nothing, bit for bit (DoRA included). A DoRA adapter normalises against the weight it
is merged into (the base plus adapters merged before it), exactly as its forward does while other adapters are
merged.

`delta_for_module` / `merged_weight_for_module` are the pure form used by the streaming DiT merger: one module's
canonical tensors (suffix -> tensor: `lora_down.weight`, `alpha`, `hada_w1_a`, `dora_scale`, ...) plus its base
weight give multiplier·ΔW or the merged weight, with the same formulas as the adapter modules.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from backend.adapters.adapter_base import AdapterModule, canonical_scale, require_part
from backend.adapters.deltas import dora_delta, is_input_axis_scale, lokr_delta, lokr_half, loha_delta, lora_delta
from backend.adapters.factory import parts_family
from backend.adapters.lokr import FACTORS as LOKR_FACTORS
from backend.adapters.lokr import check_lokr_halves, lokr_rank
from backend.errors import UserError

_LEDGER = "_adapter_merge_ledger"


class _Ledger:
    """A layer's pristine weight and the adapters merged into it, in merge order."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.pristine = weight.detach().to("cpu", copy=True)
        self.merged: list[tuple[AdapterModule, float]] = []


@torch.no_grad()
def merge_adapter(adapter: AdapterModule, multiplier: float | None = None) -> None:
    """Write the adapter into its layer's weight at `multiplier` (default: its own) and stop its forward delta."""
    if adapter.merged:
        raise RuntimeError(f"{adapter.wan_name} is already merged; unmerge it first.")
    multiplier = adapter.multiplier if multiplier is None else float(multiplier)
    layer = adapter.target
    ledger = layer.__dict__.get(_LEDGER)
    if ledger is None:
        ledger = layer.__dict__[_LEDGER] = _Ledger(layer.weight)
    if multiplier != 0.0:
        layer.weight.copy_(adapter.merged_weight(multiplier, base_weight=layer.weight.detach()))
    ledger.merged.append((adapter, multiplier))
    adapter.merged = True


@torch.no_grad()
def unmerge_adapter(adapter: AdapterModule) -> None:
    """Take the adapter back out of its layer's weight exactly (restore the copy, re-apply the others)."""
    if not adapter.merged:
        return
    layer = adapter.target
    ledger: _Ledger = layer.__dict__[_LEDGER]
    remaining = [(other, m) for other, m in ledger.merged if other is not adapter]
    layer.weight.copy_(ledger.pristine.to(layer.weight.device))
    adapter.merged = False
    for other, multiplier in remaining:
        if multiplier != 0.0:
            layer.weight.copy_(other.merged_weight(multiplier, base_weight=layer.weight.detach()))
    ledger.merged = remaining
    if not remaining:
        del layer.__dict__[_LEDGER]


def has_merged_adapters(layer: nn.Module) -> bool:
    return _LEDGER in layer.__dict__


# --- canonical tensors -> weights --------------------------------------------------------------------------------
def delta_for_module(algo_tensors: Mapping[str, torch.Tensor], base_weight: torch.Tensor, multiplier: float,
                     flags: Mapping[str, object] | None = None, *, module_name: str = "module") -> torch.Tensor:
    """multiplier · ΔW in float32 and the base weight's shape, from one module's canonical tensors.

    `alpha` is read as canonical (scale = alpha / r; rsLoRA files store alpha·√r), LoKr is scaled only when a half
    is factorized, and a `dora_scale` applies DoRA with ComfyUI's strength rule (W + multiplier·(W_dora − W)), in the
    convention `dora_convention_of` gives (flags `dora_convention`, or the scale's axis).
    flags `use_dora` true with no `dora_scale` on a Linear is a UserError (no silent all-ones magnitude); a
    convolution may lack it, as DoRA networks fall back to plain LoRA there.
    """
    parts = dict(algo_tensors)
    base = base_weight.detach().float()
    delta = _raw_delta(parts, base.shape, module_name)
    if "dora_scale" in parts:
        scale = parts["dora_scale"].float()
        delta = dora_delta(base, delta, scale, dora_convention_of(scale, flags))
    elif _truthy((flags or {}).get("use_dora")) and base.dim() == 2:
        raise UserError(f"The weights are marked use_dora but `{module_name}` has no dora_scale; the file is "
                        f"incomplete, so it cannot be merged as DoRA.")
    return delta * float(multiplier)


@torch.no_grad()
def merged_weight_for_module(algo_tensors: Mapping[str, torch.Tensor], base_weight: torch.Tensor, multiplier: float,
                             flags: Mapping[str, object] | None = None, *, module_name: str = "module") -> torch.Tensor:
    """base + multiplier·ΔW in the base weight's dtype; multiplier 0 returns an exact copy of the base."""
    if float(multiplier) == 0.0:
        return base_weight.detach().clone()
    delta = delta_for_module(algo_tensors, base_weight, multiplier, flags, module_name=module_name)
    return (base_weight.detach().float() + delta.to(base_weight.device)).to(base_weight.dtype)


def _raw_delta(parts: dict[str, torch.Tensor], shape: torch.Size, name: str) -> torch.Tensor:
    family = parts_family(name, parts)
    floats = {key: value.float() for key, value in parts.items()}
    if family == "lora":
        down = require_part(floats, "lora_down.weight", name)
        up = require_part(floats, "lora_up.weight", name)
        delta = lora_delta(down, up, canonical_scale(floats, down.shape[0]))
        if delta.numel() != shape.numel():
            raise UserError(f"`{name}`: the LoRA's ΔW has shape {tuple(delta.shape)} but the model weight is "
                            f"{tuple(shape)}; the LoRA was trained for another model.")
        return delta.reshape(shape)
    if family == "loha":
        factors = [require_part(floats, key, name) for key in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")]
        _check_numel(name, factors[0].shape[0] * factors[1].reshape(factors[1].shape[0], -1).shape[1], shape)
        return loha_delta(*factors, canonical_scale(floats, factors[1].shape[0]), shape)
    factors = {key: floats[key] for key in LOKR_FACTORS if key in floats}
    check_lokr_halves(name, factors)
    first = lokr_half(factors.get("lokr_w1"), factors.get("lokr_w1_a"), factors.get("lokr_w1_b"))
    second = lokr_half(factors.get("lokr_w2"), factors.get("lokr_w2_a"), factors.get("lokr_w2_b"))
    _check_numel(name, first.numel() * second.numel(), shape)
    return lokr_delta(first, second, canonical_scale(floats, lokr_rank(factors)), shape)


def _check_numel(name: str, numel: int, shape: torch.Size) -> None:
    if numel != shape.numel():
        raise UserError(f"`{name}`: the adapter's ΔW has {numel} elements but the model weight is {tuple(shape)}; "
                        f"the adapter was trained for another model.")


def dora_convention_of(scale: torch.Tensor, flags: Mapping[str, object] | None) -> str:
    """How one module's `dora_scale` is read: input-axis by its shape, else the file's stated convention (a file
    that states none is read as its trainer defines DoRA, over ||W + ΔW||)."""
    if is_input_axis_scale(scale):
        return "input_axis"
    convention = (flags or {}).get("dora_convention")
    return convention if convention in ("base_norm", "merged_norm") else "merged_norm"


def _truthy(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"))

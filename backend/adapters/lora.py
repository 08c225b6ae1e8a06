"""LoRA on a Linear, LoCon (the same on a convolution) and DoRA (LoRA plus a learned per-row magnitude).

Forward: base(x) + multiplier · scale · up(down(dropout(x))). down is Kaiming-uniform (a=√5), up zeros, so a new
adapter starts as the identity. On a convolution `down` is a conv with the layer's kernel, stride and padding and
`up` a 1×1 conv (kohya's LoCon), which is exactly the factorization ΔW = up @ down of the canonical file.

DoRA on a Linear (PEFT-style bias: the bias is not rescaled by the magnitude):
    y = base(x) + multiplier · [(m/n − 1) ∘ (W x) + (m/n) ∘ s·B A x],   n = ||W + s·B A||_row (detached)
At multiplier 1 this is m ∘ (W + sBA)/n applied to x; at other multipliers it is W + multiplier·(that − W), ComfyUI's
strength, so multiplier 0 is the base layer exactly. n comes from `deltas.lora_row_norm_from_parts` with ||W||²_row
cached (W is frozen), never from B·A itself.
A file in ComfyUI's convention (`base_norm`) uses n = ||W||_row instead; an input-axis scale (LyCORIS) builds ΔW.
A DoRA convolution (only ever loaded from a file) builds its ΔW, which is the size of the kernel anyway.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from backend.adapters.adapter_base import (AdapterModule, canonical_scale, copy_part, dora_output, dora_ratio,
                                           require_part)
from backend.adapters.deltas import lora_delta, lora_row_norm_from_parts, row_norm
from backend.models.fp8_scaled import effective_weight, row_scale


class LoRAAdapter(AdapterModule):
    algo = "lora"
    up_side_names = ("lora_up",)

    def __init__(self, wan_name: str, target: nn.Module, rank: int, scale: float, *, use_dora: bool = False,
                 **common) -> None:
        super().__init__(wan_name, target, **common)
        weight = target.weight
        out_features, in_features, *kernel = weight.shape
        self.rank = int(rank)
        self.scale = float(scale)
        factory = {"device": weight.device, "dtype": torch.float32}
        self.lora_down = nn.Parameter(torch.empty(self.rank, in_features, *kernel, **factory))
        self.lora_up = nn.Parameter(torch.zeros(out_features, self.rank, *([1] * len(kernel)), **factory))
        nn.init.kaiming_uniform_(self.lora_down, a=math.sqrt(5))
        self.use_dora = bool(use_dora)
        if self.use_dora:
            self.magnitude = nn.Parameter(row_norm(effective_weight(target).detach().float()).reshape(out_features, 1))

    # --- forward -----------------------------------------------------------------------------------------------
    def output_delta(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        if self.use_dora and (self.is_conv or self.dora_convention == "input_axis"):
            return self.multiplier * self.layer_op(self.neuron_dropout(x), self.delta_weight())
        hidden = self._down(self.neuron_dropout(x))
        scale = self.scale
        if self.rank_dropout and self.training_dropouts():
            hidden = hidden * self._rank_mask(hidden)
            scale = scale / (1.0 - self.rank_dropout)
        lora_out = self._up(hidden) * scale
        if not self.use_dora:
            return self.multiplier * lora_out
        ratio = dora_ratio(self.magnitude, self.dora_norm())
        return self.multiplier * dora_output(ratio, base_out, self.target.bias, lora_out)

    @torch.no_grad()
    def dora_norm(self) -> torch.Tensor:
        """||W + s·B A||_row in float32, from the cached ||W||²_row and an [r, out] product W Aᵀ taken in the base
        weight's own dtype (no float32 copy of W, no [out, in] product). A file in ComfyUI's convention
        (`base_norm`) divides by ||W||_row alone."""
        if self.dora_convention == "base_norm":
            return self.weight_row_norm_sq().sqrt()
        weight, scale = self.target.weight.detach(), row_scale(self.target)
        if scale is not None:  # scaled fp8: W = scale ∘ q row by row, so W Aᵀ = scale ∘ (q Aᵀ)
            weight = weight.to(torch.bfloat16)
        down = self.lora_down.detach().float()
        up = self.lora_up.detach().float().reshape(-1, self.rank)
        with torch.autocast(weight.device.type, enabled=False):
            projected = F.linear(down.to(weight.dtype), weight).float()  # (W Aᵀ)ᵀ, [r, out]
        if scale is not None:
            projected = projected * scale.reshape(1, -1)
        cross = (projected.T * up).sum(dim=1)
        return lora_row_norm_from_parts(self.weight_row_norm_sq(), cross, down, up, self.scale)

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_op(x, self.lora_down)

    def _up(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.is_conv:
            return F.linear(hidden, self.lora_up.reshape(-1, self.rank))
        return self._pointwise(hidden, self.lora_up)

    @staticmethod
    def _pointwise(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[weight.dim()]
        return conv(hidden, weight)

    def _rank_mask(self, hidden: torch.Tensor) -> torch.Tensor:
        """One keep/drop draw per sample and rank, shared over tokens (Linear) or positions (Conv)."""
        if hidden.dim() < 2:
            return (torch.rand(self.rank, device=hidden.device) >= self.rank_dropout).to(hidden.dtype)
        keep = (torch.rand(hidden.shape[0], self.rank, device=hidden.device) >= self.rank_dropout).to(hidden.dtype)
        if self.is_conv:
            return keep.reshape(hidden.shape[0], self.rank, *([1] * (hidden.dim() - 2)))
        return keep.reshape(hidden.shape[0], *([1] * (hidden.dim() - 2)), self.rank)

    # --- weights and files -------------------------------------------------------------------------------------
    def raw_delta(self) -> torch.Tensor:
        return lora_delta(self.lora_down, self.lora_up, self.scale)

    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            "lora_down.weight": self.lora_down.detach(),
            "lora_up.weight": self.lora_up.detach(),
            "alpha": torch.tensor(self.scale * self.rank, dtype=torch.float32),
        }
        if self.use_dora:
            magnitude = self.magnitude.detach()
            tensors["dora_scale"] = magnitude if self.dora_convention == "input_axis" else magnitude.reshape(-1, 1)
        return tensors

    @torch.no_grad()
    def load_canonical(self, parts: dict[str, torch.Tensor], *, use_dora: bool) -> None:
        copy_part(self.lora_down, parts, "lora_down.weight", self.wan_name)
        copy_part(self.lora_up, parts, "lora_up.weight", self.wan_name)
        self.scale = canonical_scale(parts, self.rank)
        if self.use_dora and use_dora:
            scale = require_part(parts, "dora_scale", self.wan_name)
            self.prepare_dora_scale(scale)
            self.magnitude.copy_(scale.reshape(self.magnitude.shape))

    @classmethod
    def from_canonical(cls, wan_name: str, target: nn.Module, parts: dict[str, torch.Tensor],
                       **common) -> "LoRAAdapter":
        rank = int(require_part(parts, "lora_down.weight", wan_name).shape[0])
        use_dora = "dora_scale" in parts
        adapter = cls(wan_name, target, rank, 1.0, use_dora=use_dora, **common)
        adapter.load_canonical(parts, use_dora=use_dora)
        return adapter


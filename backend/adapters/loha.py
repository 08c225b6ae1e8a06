"""LoHa: ΔW = scale · (w1a @ w1b) ∘ (w2a @ w2b), on a Linear or a convolution (factors over the flattened kernel).

Written here rather than wrapping `lycoris.modules.LohaModule`: that module replaces the layer's forward in place
(two networks on one layer would chain, not add), has no neuron dropout, keeps its own alpha convention in a
buffer, and applies DoRA so that multiplier 0 is not the base layer. The ΔW formula is the public one, tested
against `lycoris.functional` in tests/adapters. Init follows LyCORIS: w1a ~ N(0, 0.1), w1b, w2b ~ N(0, 1), w2a = 0,
so ΔW starts at 0. LoRA+ treats the output-side factors `hada_w1_a`, `hada_w2_a` as its "B" side. On a Linear with
r² (in + out) < in·out the forward runs through the rank-r² factorization of ΔW (`factored_forward`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from backend.adapters.adapter_base import WeightDeltaAdapter, canonical_scale, copy_part, require_part
from backend.adapters.deltas import loha_delta

FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LoHaAdapter(WeightDeltaAdapter):
    algo = "loha"
    up_side_names = ("hada_w1_a", "hada_w2_a")

    def __init__(self, wan_name: str, target: nn.Module, rank: int, scale: float, *, use_dora: bool = False,
                 **common) -> None:
        super().__init__(wan_name, target, **common)
        weight = target.weight
        out_features = weight.shape[0]
        in_flat = math.prod(weight.shape[1:])
        self.rank = int(rank)
        self.scale = float(scale)
        factory = {"device": weight.device, "dtype": torch.float32}
        self.hada_w1_a = nn.Parameter(torch.randn(out_features, self.rank, **factory) * 0.1)
        self.hada_w1_b = nn.Parameter(torch.randn(self.rank, in_flat, **factory))
        self.hada_w2_a = nn.Parameter(torch.zeros(out_features, self.rank, **factory))
        self.hada_w2_b = nn.Parameter(torch.randn(self.rank, in_flat, **factory))
        self.init_magnitude(use_dora)

    def raw_delta(self) -> torch.Tensor:
        return loha_delta(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale,
                          self.weight_shape)

    def factored_cost(self) -> int:
        """ΔW = P Q with P [out, r²] the row-wise Kronecker product of w1a, w2a and Q [r², in] the column-wise one
        of w1b, w2b (the Hadamard product of two rank-r products has rank ≤ r²): r²·(in + out) per token."""
        out_features, in_features = self.weight_shape
        return self.rank * self.rank * (in_features + out_features)

    def factored_forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = (self.hada_w1_a[:, :, None] * self.hada_w2_a[:, None, :]).reshape(self.hada_w1_a.shape[0], -1)
        columns = (self.hada_w1_b[:, None, :] * self.hada_w2_b[None, :, :]).reshape(-1, self.hada_w1_b.shape[1])
        return F.linear(F.linear(x, columns), rows) * self.scale

    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {name: getattr(self, name).detach() for name in FACTORS}
        tensors["alpha"] = torch.tensor(self.scale * self.rank, dtype=torch.float32)
        return tensors | self.magnitude_tensors()

    def load_canonical(self, parts: dict[str, torch.Tensor], *, use_dora: bool) -> None:
        for name in FACTORS:
            copy_part(getattr(self, name), parts, name, self.wan_name)
        self.scale = canonical_scale(parts, self.rank)
        self.load_magnitude(parts, use_dora)

    @classmethod
    def from_canonical(cls, wan_name: str, target: nn.Module, parts: dict[str, torch.Tensor],
                       **common) -> "LoHaAdapter":
        rank = int(require_part(parts, "hada_w1_b", wan_name).shape[0])
        use_dora = "dora_scale" in parts
        adapter = cls(wan_name, target, rank, 1.0, use_dora=use_dora, **common)
        adapter.load_canonical(parts, use_dora=use_dora)
        return adapter

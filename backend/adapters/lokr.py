"""LoKr: ΔW = scale · kron(w1, w2), each half full or a low-rank product, on a Linear or a convolution.

Shapes follow LyCORIS (so files interchange): out = a·b and in = c·d by `deltas.factorization(dim, factor)`,
w1 is [a, c] (the small half), w2 is [b, d] (a conv keeps its kernel: [b, d, *k]). A new adapter factorizes w2 as
`lokr_w2_a` [b, r] @ `lokr_w2_b` [r, d·k] when r < max(b, d) / 2, else keeps w2 full. Scale convention (LyCORIS,
ComfyUI): alpha / r when a half is factorized, 1 when both halves are full (alpha is then ignored). Init: w1 and
w2_a Kaiming-uniform, w2_b (or a full w2) zeros, so ΔW starts at 0. Files may also carry `lokr_w1_a`/`lokr_w1_b`.

Written here rather than wrapping `lycoris.modules.LokrModule`: that module patches the layer's forward in place,
and its `merge_to` mis-scales when alpha ≠ rank; the Kronecker formula is public and tested against
`lycoris.functional`. LoRA+ treats the output-side factors `lokr_w1_a`, `lokr_w2_a` as its "B" side; full halves
keep the base learning rate. On a Linear the forward is w1 @ X @ w2ᵀ on the input viewed as [c, d]
(`factored_forward`), never a product with the full [out, in] ΔW.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from backend.adapters.adapter_base import WeightDeltaAdapter, canonical_scale, copy_part
from backend.adapters.deltas import alpha_scale, factorization, lokr_delta, lokr_half
from backend.errors import UserError

FACTORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


class LoKrAdapter(WeightDeltaAdapter):
    algo = "lokr"
    up_side_names = ("lokr_w1_a", "lokr_w2_a")

    def __init__(self, wan_name: str, target: nn.Module, factors: dict[str, torch.Tensor], scale: float, *,
                 use_dora: bool = False, **common) -> None:
        """`factors`: initial tensors by canonical name (`lokr_w1` or `lokr_w1_a`+`lokr_w1_b`, same for w2)."""
        super().__init__(wan_name, target, **common)
        check_lokr_halves(wan_name, factors)
        device = target.weight.device
        for name in FACTORS:
            if name in factors:
                setattr(self, name, nn.Parameter(factors[name].detach().to(device, torch.float32).clone()))
        self.rank = lokr_rank(factors)
        self.scale = float(scale)
        self.init_magnitude(use_dora)

    @classmethod
    def create(cls, wan_name: str, target: nn.Module, rank: int, alpha: float | None, *, factor: int = -1,
               use_rslora: bool = False, use_dora: bool = False, **common) -> "LoKrAdapter":
        out_features, in_features, *kernel = target.weight.shape
        a, b = factorization(out_features, factor)
        c, d = factorization(in_features, factor)
        w1 = torch.empty(a, c)
        nn.init.kaiming_uniform_(w1, a=math.sqrt(5))
        factors = {"lokr_w1": w1}
        if rank < max(b, d) / 2:
            w2_a = torch.empty(b, rank)
            nn.init.kaiming_uniform_(w2_a, a=math.sqrt(5))
            factors |= {"lokr_w2_a": w2_a, "lokr_w2_b": torch.zeros(rank, d * math.prod(kernel))}
            scale = alpha_scale(alpha, rank, use_rslora)
        else:
            factors["lokr_w2"] = torch.zeros(b, d, *kernel)
            scale = 1.0
        return cls(wan_name, target, factors, scale, use_dora=use_dora, **common)

    def _half(self, index: int) -> torch.Tensor:
        prefix = f"lokr_w{index}"
        return lokr_half(getattr(self, prefix, None), getattr(self, prefix + "_a", None),
                         getattr(self, prefix + "_b", None))

    def raw_delta(self) -> torch.Tensor:
        return lokr_delta(self._half(1), self._half(2), self.scale, self.weight_shape)

    def factored_cost(self) -> int | None:
        """kron(w1, w2) x with x viewed as [c, d]: w1 @ X @ w2ᵀ costs b·c·(d + a) per token instead of a·b·c·d."""
        w1, w2 = self._half(1), self._half(2)
        if w1.dim() != 2 or w2.dim() != 2:
            return None
        (a, c), (b, d) = w1.shape, w2.shape
        return b * c * (d + a)

    def factored_forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, w2 = self._half(1), self._half(2)
        (a, c), (b, d) = w1.shape, w2.shape
        grid = x.reshape(*x.shape[:-1], c, d)
        out = torch.matmul(w1, torch.matmul(grid, w2.T))  # [..., a, b]
        return out.reshape(*x.shape[:-1], a * b) * self.scale

    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {name: getattr(self, name).detach() for name in FACTORS if hasattr(self, name)}
        saved_rank = self.rank if self.rank is not None else 1
        tensors["alpha"] = torch.tensor(self.scale * saved_rank, dtype=torch.float32)
        return tensors | self.magnitude_tensors()

    def load_canonical(self, parts: dict[str, torch.Tensor], *, use_dora: bool) -> None:
        mine = {name for name in FACTORS if hasattr(self, name)}
        theirs = {name for name in FACTORS if name in parts}
        if mine != theirs:
            raise UserError(f"`{self.wan_name}` holds LoKr factors {sorted(theirs)} in the file but {sorted(mine)} "
                            f"in this network; build the network with the file's rank and factor.")
        for name in sorted(mine):
            copy_part(getattr(self, name), parts, name, self.wan_name)
        self.scale = canonical_scale(parts, self.rank)
        self.load_magnitude(parts, use_dora)

    @classmethod
    def from_canonical(cls, wan_name: str, target: nn.Module, parts: dict[str, torch.Tensor],
                       **common) -> "LoKrAdapter":
        factors = {name: parts[name] for name in FACTORS if name in parts}
        use_dora = "dora_scale" in parts
        adapter = cls(wan_name, target, factors, canonical_scale(parts, lokr_rank(factors)), use_dora=use_dora,
                      **common)
        adapter.load_magnitude(parts, use_dora)
        return adapter


def lokr_rank(factors: dict[str, torch.Tensor]) -> int | None:
    """r of alpha / r: rows of the factorized half's `b` factor (w2 first, as ComfyUI reads it); None if both full."""
    for name in ("lokr_w2_b", "lokr_w1_b"):
        if name in factors:
            return int(factors[name].shape[0])
    return None


def check_lokr_halves(wan_name: str, factors: dict[str, torch.Tensor]) -> None:
    for index in (1, 2):
        full = f"lokr_w{index}" in factors
        pair = (f"lokr_w{index}_a" in factors, f"lokr_w{index}_b" in factors)
        if full == any(pair) or (any(pair) and not all(pair)):
            raise UserError(f"`{wan_name}` needs either `lokr_w{index}` or both `lokr_w{index}_a` and "
                            f"`lokr_w{index}_b`; the LoKr weights are incomplete.")

"""Truncated-SVD re-factorization of a weight delta into LoRA factors (`up @ down · scale ≈ delta`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Factors:
    up: torch.Tensor  # [out, r, 1...] (conv kernel axes as 1s)
    down: torch.Tensor  # [r, in, k...]
    energy: float  # Σσ² kept / Σσ² (1.0 for a zero delta)
    relative_error: float  # ‖delta − up·down·scale‖_F / ‖delta‖_F (0.0 for a zero delta)


def refactor(delta: torch.Tensor, rank: int, scale: float = 1.0, pad: bool = False) -> Factors:
    """The best rank-`rank` factors of `delta` (Eckart–Young), with `scale` (alpha / r) folded out evenly; `pad`
    adds zero rank rows when the delta is smaller than `rank`, so a file keeps its ranks and alphas."""
    shape = tuple(delta.shape)
    u, s, vh = torch.linalg.svd(delta.reshape(shape[0], -1).double(), full_matrices=False)
    kept = min(rank, s.numel())
    root = (s[:kept] / scale).sqrt()
    up = (u[:, :kept] * root).float().reshape(shape[0], kept, *([1] * (len(shape) - 2)))
    down = (root[:, None] * vh[:kept]).float().reshape(kept, *shape[1:])
    if pad and kept < rank:
        up = torch.cat([up, torch.zeros(shape[0], rank - kept, *up.shape[2:])], 1)
        down = torch.cat([down, torch.zeros(rank - kept, *down.shape[1:])], 0)
    total = float((s ** 2).sum())
    dropped = float((s[kept:] ** 2).sum())
    if total == 0.0:
        return Factors(up, down, 1.0, 0.0)
    return Factors(up, down, 1.0 - dropped / total, (dropped / total) ** 0.5)

"""The timestep gate τ(t): a learned, smooth, positive scale of the expert mixture as a function of t ∈ [0, 1].

τ(t) = 2·sigmoid(k(t)), k piecewise linear over `knots` evenly spaced points; all knots start at 0, so τ = 1 everywhere
at initialisation and the gate can both strengthen (up to 2) and silence the experts at any noise level.
"""
from __future__ import annotations

import torch
import torch.nn as nn

DEFAULT_KNOTS = 8


class TimestepGate(nn.Module):
    def __init__(self, knots: int = DEFAULT_KNOTS) -> None:
        super().__init__()
        if knots < 2:
            raise ValueError("the timestep gate needs at least 2 knots")
        self.knots = nn.Parameter(torch.zeros(int(knots)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] in [0, 1] -> τ [B]."""
        n = self.knots.numel()
        position = t.float().clamp(0.0, 1.0) * (n - 1)
        low = position.floor().long().clamp(max=n - 2)
        frac = position - low.float()
        value = self.knots[low] * (1.0 - frac) + self.knots[low + 1] * frac
        return 2.0 * torch.sigmoid(value)

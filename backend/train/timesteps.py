"""Flow-matching noise schedule for Wan training: x_t = (1 − t)·x0 + t·ε, target ε − x0, t in [0, 1].

Sampling modes (musubi-tuner names): uniform; sigmoid (t = σ(scale·n), n ~ N(0,1)); shift (sigmoid, then
t' = s·t / (1 + (s − 1)·t) with s = discrete_flow_shift); logsnr (λ ~ N(mean, std), t = σ(−λ/2)).
The sampled t is then mapped into [lo, hi], the intersection of [min_timestep, max_timestep]/1000 and, for a
Wan2.2 A14B expert, its side of the boundary. The transformer receives t·1000.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimestepSampler:
    mode: str = "shift"
    discrete_flow_shift: float = 3.0
    sigmoid_scale: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    lo: float = 0.0
    hi: float = 1.0

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n timesteps, drawn on the generator's device (a CUDA generator: no host-to-device copy)."""
        draw = {"generator": generator, "device": generator.device if generator is not None else None}
        if self.mode == "uniform":
            t = torch.rand(n, **draw)
        elif self.mode in ("sigmoid", "shift"):
            t = torch.sigmoid(self.sigmoid_scale * torch.randn(n, **draw))
            if self.mode == "shift":
                t = shift_timesteps(t, self.discrete_flow_shift)
        elif self.mode == "logsnr":
            logsnr = self.logit_mean + self.logit_std * torch.randn(n, **draw)
            t = torch.sigmoid(-logsnr / 2)
        else:
            raise ValueError(f"unknown timestep sampling mode {self.mode!r}")
        return self.lo + (self.hi - self.lo) * t


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def timestep_range(min_timestep: int, max_timestep: int, expert: str | None, boundary: float | None) -> tuple[float, float]:
    lo, hi = min_timestep / 1000.0, max_timestep / 1000.0
    if expert == "high":
        lo = max(lo, boundary)
    elif expert == "low":
        hi = min(hi, boundary)
    if lo >= hi:
        raise ValueError(f"the timestep range [{lo:.3f}, {hi:.3f}] is empty for the {expert} expert; "
                         "widen min_timestep/max_timestep or move the boundary.")
    return lo, hi


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def loss_weights(t: torch.Tensor, scheme: str, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Per-sample loss weight. logit_normal: the logit-normal density at t (emphasises mid-range t)."""
    if scheme == "none":
        return torch.ones_like(t)
    if scheme == "logit_normal":
        t = t.clamp(1e-5, 1 - 1e-5)
        logit = torch.log(t / (1 - t))
        density = torch.exp(-((logit - mean) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi) * t * (1 - t))
        return density
    raise ValueError(f"unknown weighting scheme {scheme!r}")

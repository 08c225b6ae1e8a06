"""Weights of post-hoc EMA over checkpoints θ_1..θ_T taken at training steps s_1 < ... < s_T (DESIGN §7).

Power-function EMA (EDM2): at step t it averages the weights θ(s), s ≤ t, with density ∝ s^γ; γ is the largest real
root of γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0 (valid for 0 < σ_rel < 1/√12). Treating checkpoint i as the
weights of the segment (s_{i−1}, s_i] with s_0 = 0 gives the segment form

    w_i = (s_i^(γ+1) − s_{i−1}^(γ+1)) / s_T^(γ+1),

which for evenly spaced steps (s_i = i·Δ) is exactly w_τ = (τ^(γ+1) − (τ−1)^(γ+1)) / T^(γ+1). The weights sum to 1,
γ = 0 with even spacing is the plain mean, and the first checkpoint keeps its weight (it stands for the segment
(0, s_1]). Computed as ratios (s_i / s_T)^(γ+1), so large steps and large γ do not overflow.

Beta EMA (musubi's --beta / --beta2): θ̄_1 = θ_1, then θ̄_i = β_i·θ̄_{i−1} + (1 − β_i)·θ_i for i = 2..T, with β_i
interpolated linearly from β (at i = 2) to β2 (at i = T); β2 defaults to β. The first checkpoint starts the average
(it is not dropped).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from backend.errors import UserError

SIGMA_REL_LIMIT = 1.0 / math.sqrt(12.0)


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """γ of the power EMA profile with relative width σ_rel (0.2 -> 1.83)."""
    if not 0.0 < sigma_rel < SIGMA_REL_LIMIT:
        raise UserError(f"σ_rel (sigma_rel) must be between 0 and 1/√12 ≈ {SIGMA_REL_LIMIT:.4f} (exclusive), got "
                        f"{sigma_rel}; typical values are 0.05-0.25.")
    inverse = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse])
    real = [float(root.real) for root in roots if abs(root.imag) < 1e-9 * max(1.0, abs(root))]
    return max(real)


def power_weights(steps: Sequence[float], gamma: float) -> list[float]:
    """Segment-form weights for checkpoints at these strictly increasing, positive steps."""
    _check_steps(steps)
    last = float(steps[-1])
    exponent = gamma + 1.0
    cumulative = [0.0] + [(float(step) / last) ** exponent for step in steps]
    return [cumulative[i + 1] - cumulative[i] for i in range(len(steps))]


def uniform_weights(count: int) -> list[float]:
    return [1.0 / count] * count


def beta_weights(count: int, beta: float, beta2: float | None = None) -> list[float]:
    """The weight each checkpoint has in musubi-style beta EMA (see the module docstring)."""
    beta2 = beta if beta2 is None else beta2
    for name, value in (("β (beta)", beta), ("β2 (beta2)", beta2)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"{name} must be at least 0 and below 1, got {value}; e.g. 0.95.")
    weights = [1.0]
    for i in range(2, count + 1):
        fraction = (i - 2) / (count - 2) if count > 2 else 0.0
        beta_i = beta + (beta2 - beta) * fraction
        weights = [w * beta_i for w in weights] + [1.0 - beta_i]
    return weights


def _check_steps(steps: Sequence[float]) -> None:
    if not steps:
        raise UserError("No checkpoints to average.")
    if any(step <= 0 for step in steps):
        raise UserError(f"Checkpoint steps must be positive, got {list(steps)}; a step-0 file is the untrained "
                        f"start, so leave it out.")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise UserError(f"Checkpoint steps must increase strictly, got {list(steps)}.")

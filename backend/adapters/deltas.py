"""The weight-update math of every adapter algorithm, as pure functions on tensors.

Adapter modules (training, injection) and the file merger (`merge.delta_for_module`) both call these, so a LoRA
injected into a model and the same LoRA merged from a file can never disagree. Shapes follow the canonical
musubi / ComfyUI layout: a base weight is [out, in] (Linear) or [out, in, *kernel] (Conv).

- LoRA / LoCon: ΔW = scale · up @ down, with down [r, in, *k] and up [out, r, 1, ...].
- LoHa: ΔW = scale · (w1a @ w1b) ∘ (w2a @ w2b), the factors flattened to [out, r] / [r, in·k].
- LoKr: ΔW = scale · kron(w1, w2); each half is a full matrix or a product `a @ b`. Following LyCORIS and ComfyUI,
  scale = alpha / r when either half is factorized (r = rows of its `b` factor) and 1 when both are full.
- DoRA: W' = scale ∘ (W + ΔW) / norm, strength s giving W + s·(W' − W). Three conventions for `dora_scale`:
  `merged_norm` (the DoRA paper, PEFT, LyCORIS' output axis, blissful-tuner, our training): the magnitude m over
  ||W + ΔW||_row; `base_norm` (ComfyUI's reading of an [out, 1] `dora_scale`, and what this app writes): over
  ||W||_row of the base weight, so a file holds m·||W||/||W + ΔW|| computed on the base it was trained on;
  `input_axis` (LyCORIS' default, a [1, in] scale): over ||W + ΔW||_col, the norm of each input column.
  Norms are detached (no gradient through them, as in the DoRA paper).
"""
from __future__ import annotations

import math

import torch


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split `dimension` into (m, n), m <= n, m·n = dimension: m = factor when it divides, else the most balanced split
    with m <= factor (-1: no bound). This is LyCORIS's rule, so our LoKr factors have the shapes its files have."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (n, m) if m > n else (m, n)
    bound = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > bound:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def lora_delta(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · up @ down in the base weight's shape [out, in, *k]."""
    rank = down.shape[0]
    product = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
    return (product * scale).reshape(up.shape[0], *down.shape[1:])


def loha_delta(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor, scale: float,
               shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """scale · (w1a @ w1b) ∘ (w2a @ w2b), reshaped to the base weight's shape."""
    first = w1a @ w1b.reshape(w1b.shape[0], -1)
    second = w2a @ w2b.reshape(w2b.shape[0], -1)
    return (first * second * scale).reshape(shape)


def lokr_half(full: torch.Tensor | None, a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
    """One Kronecker half: the full matrix, or `a @ b` with b flattened past its rank axis (LyCORIS' conv layout)."""
    if full is not None:
        return full
    return a @ b.reshape(b.shape[0], -1)


def lokr_delta(w1: torch.Tensor, w2: torch.Tensor, scale: float, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """scale · kron(w1, w2) reshaped to the base weight's shape (a conv w2 may keep its kernel axes)."""
    if w2.dim() > w1.dim():
        w1 = w1.reshape(*w1.shape, *([1] * (w2.dim() - w1.dim())))
    return (torch.kron(w1, w2.contiguous()) * scale).reshape(shape)


def lokr_scale(alpha: float, rank: int | None, use_rslora: bool = False) -> float:
    """alpha / r when a half is factorized (rank known), else 1."""
    if rank is None:
        return 1.0
    return alpha_scale(alpha, rank, use_rslora)


def alpha_scale(alpha: float | None, rank: int, use_rslora: bool = False) -> float:
    """The user's scale: alpha / r, or alpha / √r under rsLoRA; alpha 0 or None means scale 1 (kohya / blissful rule)."""
    if alpha is None or alpha == 0:
        return 1.0
    return float(alpha) / (math.sqrt(rank) if use_rslora else rank)


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """||W||_row: the L2 norm of each output row over every other axis, shaped [out, 1, ...] like `dora_scale`."""
    norm = weight.reshape(weight.shape[0], -1).norm(dim=1)
    return norm.reshape(weight.shape[0], *([1] * (weight.dim() - 1)))


DORA_CONVENTIONS = ("merged_norm", "base_norm", "input_axis")


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """||W||_col: the L2 norm of each input column over every other axis, shaped [1, in, 1, ...]."""
    moved = weight.transpose(0, 1)
    norm = moved.reshape(moved.shape[0], -1).norm(dim=1)
    return norm.reshape(1, weight.shape[1], *([1] * (weight.dim() - 2)))


def is_input_axis_scale(scale: torch.Tensor) -> bool:
    """A `dora_scale` of shape [1, in, ...] (LyCORIS' default) rather than [out, 1, ...] or [out]."""
    return scale.dim() >= 2 and scale.shape[0] == 1 and scale.shape[1] > 1


def dora_norm(base: torch.Tensor, adapted: torch.Tensor, convention: str) -> torch.Tensor:
    """The norm the scale is divided by, detached and broadcastable to the weight."""
    if convention == "input_axis":
        norm = column_norm(adapted)
    elif convention == "base_norm":
        norm = row_norm(base)
    elif convention == "merged_norm":
        norm = row_norm(adapted)
    else:
        raise ValueError(f"unknown DoRA convention {convention!r}; one of {DORA_CONVENTIONS}")
    return norm.detach().clamp_min(torch.finfo(adapted.dtype).tiny)


def dora_delta(base: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor,
               convention: str = "merged_norm") -> torch.Tensor:
    """scale ∘ (W + ΔW) / norm − W: the full-strength DoRA update (strength s gives W + s·this, ComfyUI's rule)."""
    adapted = base + delta
    norm = dora_norm(base, adapted, convention)
    return magnitude.reshape(norm.shape).to(adapted.dtype) * adapted / norm - base


def convert_dora_scale(base: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor, source: str,
                       target: str) -> torch.Tensor:
    """The `dora_scale` that gives the same W' on this base under `target` as `scale` does under `source`
    (output-axis conventions only): scale · norm_target / norm_source, shaped [out, 1]."""
    if source == target:
        return scale.reshape(-1, 1)
    adapted = base.float() + delta.float()
    ratio = dora_norm(base.float(), adapted, target) / dora_norm(base.float(), adapted, source)
    return (scale.float().reshape(-1, 1) * ratio.reshape(-1, 1)).to(scale.dtype)


def lora_row_norm(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """||W + s·up@down||_row for a Linear, [out], without building the [out, in] product up@down.

    ||W_i + s(BA)_i||² = ||W_i||² + 2s·<W_i, (BA)_i> + s²·||(BA)_i||², where
    <W_i, (BA)_i> = Σ_k B_ik (W Aᵀ)_ik  → rowsum((W Aᵀ) ∘ B), an [out, r] intermediate;
    ||(BA)_i||²   = Σ_kl B_ik (A Aᵀ)_kl B_il → rowsum((B (A Aᵀ)) ∘ B), [out, r] and [r, r] intermediates.
    The memory is O(out·r + r²) instead of O(out·in); rounding can make the sum a hair negative, hence the clamp.
    """
    cross = ((weight @ down.T) * up).sum(dim=1)
    return lora_row_norm_from_parts(weight.pow(2).sum(dim=1), cross, down, up, scale)


def lora_row_norm_from_parts(weight_square: torch.Tensor, cross: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
                             scale: float) -> torch.Tensor:
    """`lora_row_norm` from ||W||²_row (cacheable: W is frozen) and <W_i, (BA)_i> = rowsum((W Aᵀ) ∘ B)."""
    lora_square = ((up @ (down @ down.T)) * up).sum(dim=1)
    square = weight_square + 2.0 * scale * cross + scale * scale * lora_square
    return square.clamp_min(0.0).sqrt()

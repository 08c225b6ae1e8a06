"""One targeted Linear with E expert LoRAs (optionally DoRA), mixed by the gates of the current call.

    LoRA:  delta = τ(t)[b] · Σ_e g[b, e] · strength_e · s · B_e A_e x[b]
    DoRA:  delta = τ(t)[b] · Σ_e g[b, e] · strength_e · [(m_e/n_e − 1) ∘ W x[b] + (m_e/n_e) ∘ s · B_e A_e x[b]]
           n_e = ||W + s·B_e A_e||_row (detached, as in the DoRA paper), m_e the expert's own magnitude [out]

DoRA experts: each expert has its own magnitude vector, applied to its own direction W + ΔW_e; the gates mix the
experts' whole DoRA updates (DoRA_e(x) − W x). So a gate of 1 on one expert (τ = 1) is exactly that expert as an
ordinary DoRA LoRA (what `export` writes), a gate of 0 removes it entirely, magnitude included, and the mixture
stays linear in the gates, which keeps the router's and the gate's gradients as for LoRA experts. (A magnitude
shared by all experts would make an expert's effect depend on the others and an exported expert differ from it.)
Magnitudes start at ||W||_row and B at zero, so every expert starts as the identity.

The gates and τ come from the network's `RoutingState`, set by a pre-forward hook on the transformer for every call
(see network.py), so one routing decision per sample serves every layer. Experts start like any LoRA: A Kaiming-
uniform, B zeros (the mixture adds nothing until the experts learn).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from backend.adapters.adapter_base import AdapterModule
from backend.adapters.deltas import lora_row_norm_from_parts
from backend.errors import UserError
from backend.models.fp8_scaled import effective_weight


@dataclass
class RoutingState:
    """What the layers of one transformer read during a call: gates [B, E], τ [B], per-expert strengths [E]."""

    gates: torch.Tensor | None = None
    tau: torch.Tensor | None = None
    strengths: torch.Tensor | None = None
    history: list = field(default_factory=list)  # (logits, probs, gates, text key) of the calls since the last `take()`

    def take(self) -> list:
        taken, self.history = self.history, []
        return taken


class MoeLoraAdapter(AdapterModule):
    algo = "lora_moe"
    up_side_names = ("lora_up",)

    def __init__(self, wan_name: str, target: nn.Module, num_experts: int, rank: int, scale: float,
                 state: RoutingState, use_dora: bool = False, **common) -> None:
        super().__init__(wan_name, target, **common)
        if not isinstance(target, nn.Linear):
            raise UserError(f"LoRA-MoE experts adapt Linear layers only; `{wan_name}` is a "
                            f"{type(target).__name__}; exclude it with exclude_patterns.")
        out_features, in_features = target.weight.shape
        self.num_experts, self.rank, self.scale = int(num_experts), int(rank), float(scale)
        factory = {"device": target.weight.device, "dtype": torch.float32}
        self.lora_down = nn.Parameter(torch.empty(self.num_experts, self.rank, in_features, **factory))
        self.lora_up = nn.Parameter(torch.zeros(self.num_experts, out_features, self.rank, **factory))
        for e in range(self.num_experts):
            nn.init.kaiming_uniform_(self.lora_down.data[e], a=math.sqrt(5))
        self.use_dora = bool(use_dora)
        if self.use_dora:
            norm = self.weight_row_norm_sq().sqrt()
            self.magnitude = nn.Parameter(norm[None].repeat(self.num_experts, 1).to(factory["device"]))  # [E, out]
        self._state = (state,)

    @property
    def state(self) -> RoutingState:
        return self._state[0]

    def output_delta(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state.gates is None:
            raise RuntimeError(f"{self.wan_name}: no routing for this call; the LoRA-MoE network was not injected "
                               f"with its transformer hook.")
        gates = state.gates.to(x.dtype)
        if state.strengths is not None:
            gates = gates * state.strengths.to(x.dtype)
        gates = gates * state.tau.to(x.dtype)[:, None]
        batch = x.shape[0]
        if gates.shape[0] != batch:
            raise RuntimeError(f"{self.wan_name}: routing for {gates.shape[0]} samples, input has {batch}")
        hidden = torch.einsum("b...i,eri->b...er", self.neuron_dropout(x), self.lora_down)
        if self.use_dora:
            return self.multiplier * self._dora_mixture(hidden, gates, base_out)
        hidden = hidden * gates.reshape(batch, *([1] * (hidden.dim() - 3)), self.num_experts, 1)
        out = torch.einsum("b...er,eor->b...o", hidden, self.lora_up)
        return self.multiplier * self.scale * out

    def _dora_mixture(self, hidden: torch.Tensor, gates: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """Σ_e g_e · [(r_e − 1) ∘ W x + r_e ∘ s·B_e A_e x], r_e = m_e / n_e (W x: the base output without bias)."""
        ratio = self.magnitude / self.dora_norms().clamp_min(torch.finfo(torch.float32).tiny)  # [E, out], float32
        dtype = hidden.dtype
        base = base_out.to(dtype)
        if self.target.bias is not None:
            base = base - self.target.bias.detach().to(dtype)
        shape = (gates.shape[0], *([1] * (base.dim() - 1)))
        out = torch.zeros_like(base)
        for e in range(self.num_experts):
            lora = torch.einsum("b...r,or->b...o", hidden[..., e, :], self.lora_up[e].to(dtype)) * self.scale
            update = (ratio[e] - 1.0).to(dtype) * base + ratio[e].to(dtype) * lora
            out = out + gates[:, e].reshape(shape) * update
        return out

    def weight_row_norm_sq(self) -> torch.Tensor:
        """||W||²_row, float32 [out] (the layer's weight is frozen; dequantised when stored in scaled fp8)."""
        cached = self.__dict__.get("_weight_norm_sq")
        weight = self.target.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, effective_weight(self.target).detach().float().pow(2).sum(dim=1))
            self.__dict__["_weight_norm_sq"] = cached
        return cached[1]

    @torch.no_grad()
    def dora_norms(self) -> torch.Tensor:
        """n_e = ||W + s·B_e A_e||_row for every expert, [E, out] float32, without building any [out, in] product."""
        weight = effective_weight(self.target).detach()
        down, up = self.lora_down.detach().float(), self.lora_up.detach().float()
        projected = torch.einsum("eri,oi->eor", down.to(weight.dtype), weight).float()  # W A_eᵀ
        square = self.weight_row_norm_sq()
        return torch.stack([lora_row_norm_from_parts(square, (projected[e] * up[e]).sum(dim=1), down[e], up[e],
                                                     self.scale) for e in range(self.num_experts)])

    @torch.no_grad()
    def base_norm_scales(self) -> torch.Tensor:
        """The magnitudes as ComfyUI's `dora_scale` [E, out, 1] on this layer's weight: m_e · ||W|| / n_e, so that
        scale ∘ (W + ΔW_e) / ||W||_row (ComfyUI's rule) is this expert's DoRA weight."""
        ratio = self.weight_row_norm_sq().sqrt()[None] / self.dora_norms().clamp_min(torch.finfo(torch.float32).tiny)
        return (self.magnitude.detach().float() * ratio)[..., None]

    @torch.no_grad()
    def load_base_norm_scales(self, scales: torch.Tensor) -> None:
        """Inverse of `base_norm_scales` on the current weight (and the experts' factors, loaded first)."""
        ratio = self.dora_norms() / self.weight_row_norm_sq().sqrt().clamp_min(torch.finfo(torch.float32).tiny)[None]
        self.magnitude.copy_(scales.reshape(self.magnitude.shape).float() * ratio)

    def expert_delta(self, expert: int) -> torch.Tensor:
        """The expert's ΔW at gate 1 and τ 1: s · B_e A_e, or with DoRA m_e ∘ (W + s·B_e A_e) / n_e − W."""
        delta = self.scale * (self.lora_up[expert].detach() @ self.lora_down[expert].detach())
        if not self.use_dora:
            return delta
        weight = effective_weight(self.target).detach().float()
        ratio = self.magnitude[expert].detach() / self.dora_norms()[expert]
        return ratio[:, None] * (weight + delta) - weight

    def raw_delta(self) -> torch.Tensor:
        raise UserError("a LoRA-MoE layer has no single ΔW (it depends on the routing); export one expert with "
                        "`python -m backend moe export` to merge it.")

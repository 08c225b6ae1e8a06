"""The router: a small MLP from a pooled conditioning signal and the timestep to E expert logits, then top-k soft
routing with renormalisation.

Inputs (`router_inputs`): "text" = the mean of the text embedding over its non-padding tokens (layer-normed),
"latent" = per-channel mean and standard deviation of the noisy latents, "text+latent" = both; the timestep is
always appended as sinusoidal features. The gates g = renormalised top-k of softmax(logits) keep their gradient, so
the diffusion loss trains the router. Inference may smooth the gates over the denoising calls (`RoutingEma`);
training never does.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ROUTER_INPUTS = ("text", "latent", "text+latent")
TIME_FREQUENCIES = 8


def pooled_text(text: torch.Tensor) -> torch.Tensor:
    """[B, L, D] zero-padded -> [B, D]: the mean over tokens that are not all-zero padding."""
    text = text.float()
    keep = (text.abs().sum(-1, keepdim=True) > 0).float()
    pooled = (text * keep).sum(1) / keep.sum(1).clamp_min(1.0)
    return F.layer_norm(pooled, pooled.shape[-1:])


def latent_statistics(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, ...] -> [B, 2C]: per-channel mean and standard deviation."""
    flat = latents.float().flatten(2)
    return torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], dim=1)


def time_features(t: torch.Tensor) -> torch.Tensor:
    """t [B] in [0, 1] -> [B, 2·TIME_FREQUENCIES] sinusoids."""
    frequencies = torch.pi * (2.0 ** torch.arange(TIME_FREQUENCIES, device=t.device, dtype=torch.float32)) / 2.0
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def input_size(router_inputs: str, text_dim: int, latent_channels: int) -> int:
    size = 2 * TIME_FREQUENCIES
    if "text" in router_inputs:
        size += text_dim
    if "latent" in router_inputs:
        size += 2 * latent_channels
    return size


def top_k_gates(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest probabilities and renormalise them to sum 1 (gradients flow through the kept ones)."""
    if k >= probs.shape[-1]:
        return probs
    kept = torch.topk(probs, k, dim=-1).indices
    mask = torch.zeros_like(probs).scatter(-1, kept, 1.0)
    chosen = probs * mask
    return chosen / chosen.sum(-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)


class Router(nn.Module):
    def __init__(self, num_experts: int, router_inputs: str, text_dim: int, latent_channels: int,
                 hidden: int = 64, top_k: int = 2) -> None:
        super().__init__()
        if router_inputs not in ROUTER_INPUTS:
            raise ValueError(f"router_inputs must be one of {ROUTER_INPUTS}")
        self.num_experts, self.router_inputs, self.top_k = int(num_experts), router_inputs, int(top_k)
        self.text_dim, self.latent_channels, self.hidden = int(text_dim), int(latent_channels), int(hidden)
        self.net = nn.Sequential(nn.Linear(input_size(router_inputs, text_dim, latent_channels), hidden), nn.SiLU(),
                                 nn.Linear(hidden, num_experts))
        nn.init.normal_(self.net[2].weight, std=0.01)  # near-uniform routing at the start, every weight gets gradient
        nn.init.zeros_(self.net[2].bias)

    def features(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        parts = []
        if "text" in self.router_inputs:
            parts.append(pooled_text(text))
        if "latent" in self.router_inputs:
            parts.append(latent_statistics(latents))
        parts.append(time_features(t))
        return torch.cat(parts, dim=1)

    def forward(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits [B, E]."""
        features = self.features(latents, t, text).to(self.net[0].weight.dtype)
        return self.net(features).float()


class RoutingEma:
    """Inference-only smoothing of the gates over successive transformer calls of one prompt:
    g ← β·g_previous + (1 − β)·g_new, kept apart for the conditional and unconditional passes (keyed by the text)."""

    def __init__(self, beta: float) -> None:
        self.beta = float(beta)
        self.previous: dict[tuple, torch.Tensor] = {}

    def reset(self) -> None:
        self.previous.clear()

    def __call__(self, gates: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.beta <= 0.0:
            return gates
        key = (tuple(text.shape), round(float(text.float().sum()), 3))
        before = self.previous.get(key)
        if before is not None and before.shape == gates.shape:
            gates = self.beta * before + (1.0 - self.beta) * gates
        self.previous[key] = gates.detach()
        return gates


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)

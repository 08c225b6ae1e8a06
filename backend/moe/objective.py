"""One stage-2 micro-batch: the routed forward pass and every loss term, returned separately for the events.

    x_t = (1 − t)·x0 + t·ε;  v = model(x_t, t·1000, text) with the experts routed per sample
    flow = mean_b w(t_b) · mean(ROI weights · (v − (ε − x0))²)
    total = flow + α·load_balance + z·z_loss + c·entropy + w_hint(step)·KL(hint ‖ router)

A Wan2.2 A14B pair gets each sample on the transformer that owns its t (each with its own router and gate).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from backend.moe.losses import (hint_kl, load_balancing_loss, roi_weights, router_z_loss, routing_entropy,
                                weighted_flow_error)
from backend.moe.network import MoeNetwork
from backend.train.timesteps import add_noise, flow_target, loss_weights

TERMS = ("flow", "load_balance", "z_loss", "entropy", "hint_kl")


@dataclass
class Weights:
    load_balance: float
    z_loss: float
    entropy: float
    hint: float
    roi: float


class MoeDenoiser(nn.Module):
    """velocity = model(x_t, t·1000, text), each sample on the transformer owning its t, with hints passed along."""

    def __init__(self, models: dict[str, nn.Module], networks: dict[str, MoeNetwork], boundary: float | None) -> None:
        super().__init__()
        self._models = models
        self.networks = nn.ModuleDict(networks)
        self.boundary = boundary

    def train(self, mode: bool = True) -> "MoeDenoiser":
        super().train(mode)
        for model in self._models.values():
            model.train(mode)
        return self

    def _run(self, label: str, x_t, t, text, hint) -> torch.Tensor:
        self.networks[label].set_hint(hint)
        return self._models[label](hidden_states=x_t, timestep=t * 1000.0, encoder_hidden_states=text,
                                   return_dict=False)[0]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, hint: torch.Tensor | None):
        labels = list(self.networks)
        if len(labels) == 1:
            return self._run(labels[0], x_t, t, text, hint)
        high = t >= self.boundary
        out = None
        for label, mask in (("high", high), ("low", ~high)):
            if label in self.networks and mask.any():
                part = self._run(label, x_t[mask], t[mask], text[mask], None if hint is None else hint[mask])
                if out is None:
                    out = part.new_zeros((x_t.shape[0], *part.shape[1:]))
                out[mask] = part
        return out


def moe_losses(denoiser: MoeDenoiser, batch: dict, t: torch.Tensor, noise: torch.Tensor, hint: torch.Tensor,
               masks: torch.Tensor | None, weights: Weights, settings, device) -> tuple[torch.Tensor, dict]:
    """(total loss, {term: float, "agreement": fraction of labelled samples whose top router expert is the label})."""
    x0 = batch["latents"].to(device, torch.float32)
    text = batch["text_embeds"].to(device, torch.float32)
    x_t = add_noise(x0, noise.to(device), t.to(device))
    if "image_latents" in batch:
        x_t = torch.cat([x_t, batch["image_latents"].to(device, torch.float32)], dim=1)
    for network in denoiser.networks.values():
        network.record_history = True
        network.state.take()
    prediction = denoiser(x_t, t.to(device), text, hint.to(device))
    roi = roi_weights(None if masks is None else masks.to(device), weights.roi)
    per_sample = weighted_flow_error(prediction, flow_target(x0, noise.to(device)), roi)
    flow = (per_sample * loss_weights(t.to(device), settings.weighting_scheme, settings.logit_mean,
                                      settings.logit_std)).mean()
    terms = {name: flow.new_zeros(()) for name in TERMS[1:]}
    agree, labelled = 0, 0
    learned = settings.routing_mode != "hint"
    for network in denoiser.networks.values():
        calls = network.state.take()
        network.record_history = False
        for logits, probs, _, _ in calls:
            if learned:
                terms["load_balance"] = terms["load_balance"] + load_balancing_loss(probs) / len(calls)
                terms["z_loss"] = terms["z_loss"] + router_z_loss(logits) / len(calls)
                terms["entropy"] = terms["entropy"] + routing_entropy(probs) / len(calls)
        if calls and network.hint is not None:
            logits, probs, _, _ = calls[-1]
            part_hint = network.hint.to(probs.device)
            if settings.routing_mode == "learned+hint":
                terms["hint_kl"] = terms["hint_kl"] + hint_kl(probs, part_hint)
            rows = part_hint.sum(-1) > 0.5
            labelled += int(rows.sum())
            agree += int((probs[rows].argmax(-1) == part_hint[rows].argmax(-1)).sum())
    total = (flow + weights.load_balance * terms["load_balance"] + weights.z_loss * terms["z_loss"]
             + weights.entropy * terms["entropy"] + weights.hint * terms["hint_kl"])
    values = {"flow": float(flow.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
    values["agreement"] = agree / labelled if labelled else None
    return total, values

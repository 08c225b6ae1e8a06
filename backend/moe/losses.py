"""The routing losses and the ROI-weighted flow-matching error.

Switch load balancing (Fedus et al. 2021): L = α · E · Σ_e f_e · P_e, f_e the fraction of samples whose largest
gate is expert e, P_e the mean router probability of e. f is a count (no gradient); the gradient reaches the router
through P and lowers the probability of the experts that take more than their share. Uniform probabilities give
L = α whatever f is.
Router z-loss (Zoph et al. 2022): mean over samples of logsumexp(logits)², keeps the logits small.
Entropy: the mean per-sample entropy of the router probabilities; a positive coefficient asks for confident
(peaked) routing, a negative one for spread-out routing.
Hint KL: KL(hint ‖ p) = −Σ hint · log p (+ the hint's own entropy, 0 for one-hot hints) over labelled samples.
"""
from __future__ import annotations

import torch

from backend.moe.router import entropy


def load_balancing_loss(probs: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """α·E·Σ f_e·P_e over a batch of router probabilities [B, E]."""
    num_experts = probs.shape[-1]
    chosen = probs.argmax(-1)
    fraction = torch.bincount(chosen, minlength=num_experts).to(probs.dtype) / probs.shape[0]
    mean_prob = probs.mean(0)
    return alpha * num_experts * (fraction.detach() * mean_prob).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    return (torch.logsumexp(logits, dim=-1) ** 2).mean()


def routing_entropy(probs: torch.Tensor) -> torch.Tensor:
    return entropy(probs).mean()


def hint_kl(probs: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """KL(hint ‖ probs), averaged over the samples that have a hint (rows summing to 1); 0 when none has one."""
    labelled = hint.sum(-1) > 0.5
    if not labelled.any():
        return probs.sum() * 0.0
    target, predicted = hint[labelled], probs[labelled].clamp_min(1e-12)
    return (target * (torch.log(target.clamp_min(1e-12)) - torch.log(predicted))).sum(-1).mean()


def scheduled_weight(start: float, end: float, step: int, total: int) -> float:
    """Linear schedule of the hint weight from `start` at step 0 to `end` at the last step."""
    if total <= 1:
        return end
    fraction = min(max(step / (total - 1), 0.0), 1.0)
    return start + (end - start) * fraction


def roi_weights(masks: torch.Tensor | None, inside: float) -> torch.Tensor | None:
    """Masks [B, 1, F, H, W] in [0, 1] -> per-element loss weights 1 + (inside − 1)·mask, normalised to mean 1 per
    sample (so the ROI weight shifts attention without changing the loss scale)."""
    if masks is None:
        return None
    weights = 1.0 + (inside - 1.0) * masks
    return weights / weights.flatten(1).mean(1).reshape(-1, *([1] * (weights.dim() - 1)))


def weighted_flow_error(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean squared error [B], optionally weighted per element."""
    error = (prediction.float() - target.float()) ** 2
    if weights is not None:
        error = error * weights.to(error.dtype)
    return error.flatten(1).mean(1)

"""Which base model a DoRA file's `dora_scale` was computed on, and a warning when it is applied to another one.

Files this app writes store DoRA scales in ComfyUI's convention (`base_norm`: m·||W||/||W + ΔW|| per output row of
the base W the LoRA was trained on), which gives the trained weights only on that base. The header records the base's
fingerprint: the sum of the row norms of each DoRA module's base weight. Applying the file to a model whose weights
differ there (another finetune, another variant) still does what ComfyUI does, but no longer gives the trained
weights, so loading says so.
"""
from __future__ import annotations

import hashlib
import json
from typing import Mapping

import torch

from backend.adapters.deltas import row_norm
from backend.models.fp8_scaled import effective_weight

RELATIVE_TOLERANCE = 1e-3  # bf16 / fp16 copies of the same base differ by ~1e-5 here; a finetune by far more


def base_fingerprint(base_weights: Mapping[str, torch.Tensor | torch.nn.Module]) -> dict:
    """{"row_norm_sums": {Wan name: Σ_rows ||W_row||}, "sha256": short hash of them} for the DoRA modules' bases.
    A value may be the layer itself: its weight as it computes (dequantised one layer at a time for scaled fp8)."""
    def weight_of(value) -> torch.Tensor:
        return effective_weight(value) if isinstance(value, torch.nn.Module) else value

    sums = {name: float(f"{float(row_norm(weight_of(value).detach().float()).sum()):.7g}")
            for name, value in sorted(base_weights.items())}
    digest = hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()[:16]
    return {"sha256": digest, "row_norm_sums": sums}


def parse_fingerprint(text: str | None) -> dict | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("row_norm_sums"), dict):
        return value
    return None


def base_mismatch(recorded: Mapping | None, base_weights: Mapping[str, torch.Tensor], label: str) -> str | None:
    """One sentence when `base_weights` are not the base the file's DoRA scales were computed on; None when they
    are, or when the file records no base (a file from another tool, or one in the trainer's own convention)."""
    if not recorded:
        return None
    sums = recorded.get("row_norm_sums") or {}
    differing = []
    for name, weight in base_weights.items():
        if name not in sums:
            continue
        now = float(row_norm(weight.detach().float()).sum())
        then = float(sums[name])
        if abs(now - then) > RELATIVE_TOLERANCE * max(abs(then), 1e-12):
            differing.append((name, then, now))
    if not differing:
        return None
    name, then, now = differing[0]
    return (f"{label} is a DoRA file whose scales were computed on another base model ({len(differing)} of "
            f"{len(base_weights)} modules differ, e.g. `{name}`: row-norm sum {then:.6g} then, {now:.6g} here), so "
            f"it is applied as ComfyUI applies it but does not give the trained weights; use it on the base it was "
            f"trained on, or turn it into a plain LoRA there with `python -m backend convert IN OUT --to lora "
            f"--base DIT`.")


def file_base_warning(model: torch.nn.Module, flags: Mapping, label: str) -> str | None:
    """`base_mismatch` for a LoRA file's flags (LoraFile.flags) against the model it is about to be applied to."""
    from backend.adapters.targets import adaptable_layers

    recorded = flags.get("dora_base") if flags.get("dora_convention") == "base_norm" else None
    if not recorded:
        return None
    layers = adaptable_layers(model)
    weights = {name: layers[name].weight for name in recorded.get("row_norm_sums", {}) if name in layers}
    return base_mismatch(recorded, weights, label)

"""Which base model a DoRA file's `dora_scale` was computed on, and a warning when it is applied to another one.

Files this app writes store DoRA scales in ComfyUI's convention (`base_norm`: m·||W||/||W + ΔW|| per output row of
the base W the LoRA was trained on), which gives the trained weights only on that base. The header records the base's
fingerprint: per DoRA module, the mean row norm of its base weight and a small random sketch of the row norms. Applying the file to a model whose weights
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

# Row norms moved by this much (relative) change what ComfyUI's rule gives by as much. A bf16 / fp16 copy of the same
# base moves them by ~2e-3/√in, an fp8 copy by ~4e-2/√in (5e-4 at Wan's in = 5120): those pass; a finetune that moves
# row norms by a percent does not.
TOLERANCE = 3e-3
SKETCH_SIZE = 8


def _weight_of(value: torch.Tensor | torch.nn.Module) -> torch.Tensor:
    """A weight, or a layer's weight as it computes (dequantised one layer at a time for scaled fp8)."""
    return effective_weight(value) if isinstance(value, torch.nn.Module) else value


def _summary(weight: torch.Tensor | torch.nn.Module) -> dict:
    """The row norms of one weight, summarised: their mean and a random ±1 sketch of their relative deviations
    (row norms that each move by about δ move the sketch values by about δ)."""
    norms = row_norm(_weight_of(weight).detach().double()).reshape(-1)
    mean = float(norms.mean())
    signs = torch.randint(0, 2, (SKETCH_SIZE, norms.numel()), generator=torch.Generator().manual_seed(0)) * 2 - 1
    deviation = norms / max(mean, 1e-30) - 1.0
    sketch = (signs.double() @ deviation) / norms.numel() ** 0.5
    return {"mean": float(f"{mean:.9g}"), "sketch": [float(f"{value:.6g}") for value in sketch.tolist()]}


def base_fingerprint(base_weights: Mapping[str, torch.Tensor | torch.nn.Module]) -> dict:
    """{"modules": {Wan name: row-norm summary}, "sha256": short hash of them} for the DoRA modules' bases; a value
    may be the layer itself."""
    modules = {name: _summary(weight) for name, weight in sorted(base_weights.items())}
    digest = hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()[:16]
    return {"sha256": digest, "modules": modules}


def _differs(then: Mapping, now: Mapping) -> bool:
    if abs(now["mean"] - then["mean"]) > TOLERANCE * max(abs(then["mean"]), 1e-30):
        return True
    return any(abs(a - b) > TOLERANCE for a, b in zip(now["sketch"], then["sketch"]))


def base_mismatch(recorded: Mapping | None, base_weights: Mapping[str, torch.Tensor | torch.nn.Module],
                  label: str) -> str | None:
    """One sentence when `base_weights` are not the base the file's DoRA scales were computed on; None when they
    are, or when the file records no base (a file from another tool, or one in the trainer's own convention)."""
    modules = (recorded or {}).get("modules") or {}
    differing = [name for name, weight in base_weights.items()
                 if name in modules and _differs(modules[name], _summary(weight))]
    if not differing:
        return None
    return (f"{label} is a DoRA file whose scales were computed on another base model (the row norms of "
            f"{len(differing)} of {len(base_weights)} modules differ, e.g. `{differing[0]}`), so it is applied as "
            f"ComfyUI applies it but does not give the trained weights; use it on the base it was trained on, or turn "
            f"it into a plain LoRA there with `python -m backend convert IN OUT --to lora --base DIT`.")


def file_base_warning(model: torch.nn.Module, flags: Mapping, label: str) -> str | None:
    """`base_mismatch` for a LoRA file's flags (LoraFile.flags) against the model it is about to be applied to."""
    from backend.adapters.targets import adaptable_layers

    recorded = flags.get("dora_base") if flags.get("dora_convention") == "base_norm" else None
    if not recorded:
        return None
    layers = adaptable_layers(model)
    weights = {name: layers[name] for name in recorded.get("modules", {}) if name in layers}
    return base_mismatch(recorded, weights, label)

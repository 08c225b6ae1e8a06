"""Turn the LoRA layouts other tools write into the canonical one (musubi / ComfyUI `lora_unet_*` keys, alpha/r scale).

Read here:
- `lora_unet_*` files: ours, musubi-tuner's (LyCORIS LoHa / LoKr through `lycoris.kohya` too), blissful-tuner's (its `use_dora_flag` / `use_rslora_flag` tensors become
  flags, its per-module `dora_layer.weight` becomes `dora_scale`, its rsLoRA alpha becomes alpha·√r);
- dotted layouts: ComfyUI / diffusers-converted `diffusion_model.<Wan name>.lora_A.weight / lora_B.weight (/ .alpha)`
  (also `model.diffusion_model.` or no prefix) and diffusers / PEFT `transformer.<diffusers name>.lora_A.weight`
  (scale from its `lora_adapter_metadata` when present, else PEFT's default scale 1);
- `lycoris_<Wan name with '.'→'_'>.*`: LyCORIS' own prefix (SimpleTuner's LyCORIS files), read as `lora_unet_*`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from backend.adapters.anatomy import group_by_prefix, module_rank
from backend.adapters.deltas import is_input_axis_scale
from backend.adapters.keys import (LOHA_SUFFIXES, LOKR_SUFFIXES, is_wan_module, module_name_from_prefix,
                                   split_canonical_key, split_dotted_key)
from backend.errors import UserError
from backend.models.names import diffusers_to_wan, lora_key_prefix

BLISSFUL_FLAGS = ("use_dora_flag", "use_rslora_flag")
BLISSFUL_DORA_SUFFIX = "dora_layer.weight"
LYCORIS_PREFIX = "lycoris_"
DOTTED_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
_DOTTED_RENAMES = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_down.weight": "lora_down.weight",
    "lora_up.weight": "lora_up.weight",
    "alpha": "alpha",
    "dora_scale": "dora_scale",
    "lora_magnitude_vector": "dora_scale",
    "lora_magnitude_vector.weight": "dora_scale",
    **{suffix: suffix for suffix in LOHA_SUFFIXES + LOKR_SUFFIXES},
}
_UNSUPPORTED_SUFFIXES = ("diff", "diff_b", "lora_B.bias", "lora_A.bias", "lora_up.bias", "lora_down.bias")


@dataclass
class Canonical:
    """A state dict in the canonical layout plus what reading it learned."""
    tensors: dict[str, torch.Tensor]
    source_format: str  # musubi | blissful | lycoris | comfy | diffusers (ours is decided from metadata by the caller)
    stated_flags: dict[str, bool] = field(default_factory=dict)  # flags the tensors themselves state (blissful)
    notes: list[str] = field(default_factory=list)


def canonicalize(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Canonical:
    if not state_dict:
        raise UserError("The LoRA file contains no tensors; it is empty or was not saved completely.")
    if any(key.startswith("lora_unet_") for key in state_dict):
        return _from_kohya(dict(state_dict))
    if all(key.startswith(LYCORIS_PREFIX) for key in state_dict):
        canonical = _from_kohya({"lora_unet_" + key[len(LYCORIS_PREFIX):]: value for key, value in state_dict.items()})
        canonical.source_format = "lycoris"
        return canonical
    return _from_dotted(dict(state_dict), metadata)


def as_dora_scale(tensor: torch.Tensor) -> torch.Tensor:
    """A per-output-row magnitude ([out], [out, 1], [out, 1, 1...]) as ComfyUI's [out, 1]; an input-axis scale
    [1, in, ...] (LyCORIS' default `wd_on_out=False`) keeps its shape, which is how every reader tells the axes apart."""
    return tensor if is_input_axis_scale(tensor) else tensor.reshape(-1, 1)


def lora_ranks(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """prefix -> rank for the LoRA-style modules (rank = rows of lora_down)."""
    return {key[: -len(".lora_down.weight")]: int(value.shape[0])
            for key, value in tensors.items() if key.endswith(".lora_down.weight")}


def _fill_missing_alphas(tensors: dict[str, torch.Tensor], alpha_of_rank, notes: list[str], why: str) -> None:
    """Give every module without `.alpha` the alpha that keeps its tool's scale (alpha_of_rank(prefix, rank))."""
    filled = 0
    for prefix, parts in group_by_prefix(tensors).items():
        if "alpha" in parts:
            continue
        try:
            rank = module_rank(parts)
        except KeyError:
            continue  # incomplete module: reported by the completeness check
        alpha = alpha_of_rank(prefix, rank) if rank else 1.0
        tensors[f"{prefix}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
        filled += 1
    if filled:
        notes.append(f"{filled} module(s) had no alpha; {why}.")


def _from_kohya(state_dict: dict[str, torch.Tensor]) -> Canonical:
    notes: list[str] = []
    stated = {name.removesuffix("_flag"): bool(state_dict.pop(name).reshape(-1)[0].item())
              for name in BLISSFUL_FLAGS if name in state_dict}
    tensors: dict[str, torch.Tensor] = {}
    saw_dora_layer = False
    for key, value in state_dict.items():
        if key.endswith("." + BLISSFUL_DORA_SUFFIX):
            key, value, saw_dora_layer = key.replace(BLISSFUL_DORA_SUFFIX, "dora_scale"), as_dora_scale(value), True
        prefix, suffix = split_canonical_key(key)
        module_name_from_prefix(prefix)
        if suffix == "dora_scale":
            value = as_dora_scale(value)
        tensors[key] = value
    _fill_missing_alphas(tensors, lambda _prefix, rank: rank, notes, "used alpha = rank (scale 1), as musubi does")
    if stated.get("use_rslora"):
        for prefix, rank in lora_ranks(tensors).items():
            tensors[f"{prefix}.alpha"] = tensors[f"{prefix}.alpha"].float() * math.sqrt(rank)
        notes.append("rsLoRA file (scale alpha/√r): alphas stored as alpha·√r so that alpha/r gives the same scale.")
    if saw_dora_layer:
        notes.append("DoRA magnitudes `dora_layer.weight` read as `dora_scale` [out, 1].")
    blissful = bool(stated) or saw_dora_layer
    return Canonical(tensors, "blissful" if blissful else "musubi",
                     stated, notes)


def _strip_prefix(key: str) -> str:
    for prefix in DOTTED_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _dotted_module(key: str) -> tuple[str, str, bool]:
    """key -> (Wan module name, canonical suffix, whether the key used diffusers names)."""
    body = _strip_prefix(key)
    if split_dotted_key(body, _UNSUPPORTED_SUFFIXES) is not None:
        raise UserError(f"The tensor `{key}` is a full-weight difference or a bias, which LoRA files of this app "
                        f"cannot hold; load that file in ComfyUI directly instead.")
    parts = split_dotted_key(body, tuple(_DOTTED_RENAMES))
    if parts is None:
        raise UserError(f"The tensor `{key}` is not part of a LoRA / LoHa / LoKr adapter in any layout this app "
                        f"reads (lora_unet_*, diffusion_model.*, transformer.*).")
    module, suffix = parts
    if is_wan_module(module):
        return module, _DOTTED_RENAMES[suffix], False
    if is_wan_module(diffusers_to_wan(module)):
        return diffusers_to_wan(module), _DOTTED_RENAMES[suffix], True
    raise UserError(f"The tensor `{key}` belongs to `{module}`, which is no Wan transformer module this app knows; "
                    f"the file is for another model.")


def _peft_config(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The PEFT LoraConfig fields diffusers stores under `lora_adapter_metadata` (or plain `lora_alpha`, `r` keys)."""
    config: dict[str, Any] = {}
    for key in ("r", "lora_alpha", "use_rslora"):
        if key in metadata:
            config[key] = metadata[key]
    try:
        packed = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        packed = {}
    if isinstance(packed, dict):
        config.update({key.removeprefix("transformer."): value for key, value in packed.items()})
    return config


def _peft_pattern_value(patterns: Mapping[str, Any], module: str) -> Any:
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def _peft_alpha(config: Mapping[str, Any], diffusers_module: str, rank: int) -> float:
    """PEFT's scale for one module (lora_alpha/r, or lora_alpha/√r under rsLoRA) turned into an alpha/r alpha."""
    alpha = _peft_pattern_value(config.get("alpha_pattern") or {}, diffusers_module)
    if alpha is None:
        alpha = config.get("lora_alpha")
    if alpha is None:
        return float(rank)
    use_rslora = str(config.get("use_rslora", "false")).lower() in ("true", "1")
    scale = float(alpha) / (math.sqrt(rank) if use_rslora else rank)
    return scale * rank


def _from_dotted(state_dict: dict[str, torch.Tensor], metadata: Mapping[str, str]) -> Canonical:
    tensors: dict[str, torch.Tensor] = {}
    diffusers_module_of: dict[str, str] = {}
    naming: set[bool] = set()
    for key, value in state_dict.items():
        module, suffix, diffusers_names = _dotted_module(key)
        naming.add(diffusers_names)
        prefix = lora_key_prefix(module)
        if diffusers_names:
            diffusers_module_of[prefix] = split_dotted_key(_strip_prefix(key), tuple(_DOTTED_RENAMES))[0]
        if suffix == "dora_scale":
            value = as_dora_scale(value)
        if f"{prefix}.{suffix}" in tensors:
            raise UserError(f"The file holds two tensors for `{prefix}.{suffix}` (one of them `{key}`); "
                            f"it mixes two LoRAs or two layouts.")
        tensors[f"{prefix}.{suffix}"] = value
    notes: list[str] = []
    source = "diffusers" if True in naming else "comfy"
    if source == "diffusers":
        config = _peft_config(metadata)
        why = ("used its PEFT lora_alpha" if "lora_alpha" in config or "alpha_pattern" in config
               else "used alpha = rank (PEFT's default scale 1)")
        _fill_missing_alphas(tensors, lambda prefix, rank: _peft_alpha(config, diffusers_module_of.get(prefix, ""),
                                                                       rank), notes, why)
    else:
        _fill_missing_alphas(tensors, lambda _prefix, rank: rank, notes, "used alpha = rank (scale 1, alpha folded)")
    return Canonical(tensors, source, {}, notes)

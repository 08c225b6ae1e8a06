"""Which layers of a model an adapter network adapts, addressed by their original Wan names.

On a diffusers `WanTransformer3DModel` every layer is named through `backend.models.names.diffusers_to_wan`
(`blocks.0.attn1.to_q` -> `blocks.0.self_attn.q`); on any other nn.Module names are used as they are.
Default targets (musubi's): the Linear layers inside `blocks.<i>.` (10 per Wan block, 12 with Wan2.1 I2V's
k_img/v_img); a model without `blocks.<i>.` layers gets all its Linear layers. Convolutions (Wan's
`patch_embedding`, a Conv3d) join when the network adapts convolutions (LoCon, conv_dim).

Patterns follow musubi: `re.fullmatch` on the dotted original name; a layer is skipped when it matches an exclude
pattern and no include pattern; include patterns alone restrict nothing (restrict with exclude `.*` + include).
A pattern that matches none of the candidate layers is a UserError (it is almost always a typo).
"""
from __future__ import annotations

import difflib
import re
from typing import Sequence

import torch.nn as nn

from backend.adapters.adapter_base import CONV_TYPES
from backend.errors import UserError
from backend.models.names import block_index, diffusers_to_wan


def is_wan_transformer(model: nn.Module) -> bool:
    return any(cls.__name__ == "WanTransformer3DModel" for cls in type(model).__mro__)


def adaptable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Original (Wan) name -> Linear / Conv layer, in the model's module order."""
    rename = diffusers_to_wan if is_wan_transformer(model) else (lambda name: name)
    return {rename(name): module for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, *CONV_TYPES))}


def candidate_names(layers: dict[str, nn.Module], include_conv: bool) -> list[str]:
    """The default targets (see the module docstring), in module order."""
    linears = [name for name, layer in layers.items() if isinstance(layer, nn.Linear)]
    in_blocks = [name for name in linears if block_index(name) is not None]
    chosen = set(in_blocks or linears)
    if include_conv:
        chosen |= {name for name, layer in layers.items() if isinstance(layer, CONV_TYPES)}
    return [name for name in layers if name in chosen]


def select_targets(candidates: Sequence[str], exclude: Sequence[str] = (), include: Sequence[str] = ()) -> list[str]:
    """musubi's rule: keep a name unless it fullmatches an exclude pattern and no include pattern."""
    excluders = _compiled("exclude_patterns", exclude, candidates)
    includers = _compiled("include_patterns", include, candidates)
    selected = []
    for name in candidates:
        excluded = any(p.fullmatch(name) for p in excluders)
        if not excluded or any(p.fullmatch(name) for p in includers):
            selected.append(name)
    return selected


def _compiled(key: str, patterns: Sequence[str], candidates: Sequence[str]) -> list[re.Pattern]:
    compiled = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise UserError(f"network_args {key}: `{pattern}` is not a valid regular expression ({exc}).") from None
        if not any(regex.fullmatch(name) for name in candidates):
            closest = difflib.get_close_matches(pattern, candidates, n=1, cutoff=0.0)
            hint = f" (closest module: `{closest[0]}`)" if closest else ""
            raise UserError(f"network_args {key}: `{pattern}` matches none of the {len(candidates)} adaptable "
                            f"modules{hint}; patterns fullmatch dotted original Wan names like `blocks.0.self_attn.q`.")
        compiled.append(regex)
    return compiled

"""Loading canonical adapter weights: into an existing network (resume, with the flag rules) or as a new network.

Canonical state: `lora_unet_<Wan name with '.'→'_'>.<suffix>` -> tensor, alpha stored so that alpha / r is the
scale (rsLoRA files included). Flags come from the file's metadata: `use_rslora`, `use_dora`, `algo`.

Flag rules (the seed's troubleshooting table):
- rsLoRA setting of the weights ≠ the network's: hard error ("RS-LoRA flag mismatch"); a file with no flag counts as
  plain LoRA, and when most of its alphas are k·√r (and r is not a perfect square) the message hints at rsLoRA.
- network expects DoRA, weights have no `dora_scale`: hard error. Weights have DoRA, network does not: a warning,
  and the magnitudes are ignored.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Mapping

import torch
import torch.nn as nn

from backend.adapters.adapter_base import AdapterModule
from backend.adapters.factory import ALGO_FAMILY, adapter_from_canonical, parts_family
from backend.adapters.lokr import lokr_rank
from backend.adapters.targets import adaptable_layers
from backend.errors import UserError
from backend.models.names import lora_key_prefix

log = logging.getLogger("backend.adapters")

Groups = dict[str, dict[str, torch.Tensor]]


def group_state(state: Mapping[str, torch.Tensor]) -> Groups:
    """`prefix.suffix` keys -> {prefix: {suffix: tensor}}."""
    groups: Groups = {}
    for key, tensor in state.items():
        prefix, dot, suffix = key.partition(".")
        if not dot:
            raise UserError(f"The weight `{key}` is not `<module>.<tensor>` (e.g. `lora_unet_blocks_0_ffn_0.alpha`); "
                            f"convert the file to the musubi layout first.")
        groups.setdefault(prefix, {})[suffix] = tensor
    return groups


def flag_value(value: object) -> bool | None:
    """A metadata flag as bool (bools, "true"/"false" strings, 0-dim tensors); None when absent."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return bool(value.float().item())
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def module_rank(parts: Mapping[str, torch.Tensor]) -> int | None:
    if "lora_down.weight" in parts:
        return int(parts["lora_down.weight"].shape[0])
    if "hada_w1_b" in parts:
        return int(parts["hada_w1_b"].shape[0])
    return lokr_rank(dict(parts))


def rslora_alpha_suspicious(groups: Groups) -> bool:
    """True when most modules whose rank is not a perfect square have alpha = k·√r for a whole k ≥ 1."""
    conclusive = hits = 0
    for parts in groups.values():
        rank = module_rank(parts)
        if "alpha" not in parts or not rank or math.isqrt(rank) ** 2 == rank:
            continue
        conclusive += 1
        k = float(parts["alpha"].float().item()) / math.sqrt(rank)
        hits += round(k) >= 1 and abs(k - round(k)) <= 1e-4 * max(1.0, abs(k))
    return conclusive > 0 and hits * 2 > conclusive


_RSLORA_HINT = " (most alphas equal k·√rank, which suggests the file was trained with use_rslora=True)"


def check_rslora(network_rslora: bool, flags: Mapping[str, object], groups: Groups) -> None:
    file_rslora = flag_value(flags.get("use_rslora"))
    hint = _RSLORA_HINT if rslora_alpha_suspicious(groups) else ""
    if file_rslora is None:
        if network_rslora:
            raise UserError("RS-LoRA flag mismatch: this network uses use_rslora=True but the weights carry no "
                            f"use_rslora flag{hint}; set use_rslora=False or load weights trained with rsLoRA.")
        if hint:
            log.warning("The weights carry no use_rslora flag%s; their alphas already give the right scale, "
                        "but resume training with use_rslora=True if that is how they were trained.", hint)
        return
    if file_rslora != network_rslora:
        raise UserError(f"RS-LoRA flag mismatch: the weights were trained with use_rslora={file_rslora} but this "
                        f"network has use_rslora={network_rslora}; set use_rslora={file_rslora} in network_args.")


def load_into(adapters: dict[str, AdapterModule], network_rslora: bool, network_algo: str,
              state: Mapping[str, torch.Tensor], flags: Mapping[str, object] | None) -> None:
    """Copy canonical weights into existing adapters (resume), enforcing the flag rules above."""
    flags = flags or {}
    groups = group_state(state)
    check_rslora(network_rslora, flags, groups)
    file_algo = flags.get("algo")
    if isinstance(file_algo, str) and ALGO_FAMILY.get(file_algo.lower(), file_algo) != ALGO_FAMILY[network_algo]:
        raise UserError(f"The weights are algo={file_algo} but this network is algo={network_algo}; set "
                        f"algo={file_algo} in network_args to resume them.")
    by_prefix = {lora_key_prefix(name): adapter for name, adapter in adapters.items()}
    _check_same_modules(set(by_prefix), set(groups))
    file_dora = bool(flag_value(flags.get("use_dora"))) or any("dora_scale" in parts for parts in groups.values())
    _check_dora(adapters, groups, by_prefix, file_dora)
    for prefix, adapter in by_prefix.items():
        parts = groups[prefix]
        family = parts_family(adapter.wan_name, parts)
        if family != ALGO_FAMILY[adapter.algo]:
            raise UserError(f"`{adapter.wan_name}` holds {family} weights but this network is {adapter.algo}; set "
                            f"algo={family} in network_args to resume them.")
        adapter.load_canonical(parts, use_dora=adapter.use_dora)


def _check_same_modules(network_prefixes: set[str], file_prefixes: set[str]) -> None:
    missing = sorted(network_prefixes - file_prefixes)
    extra = sorted(file_prefixes - network_prefixes)
    if missing or extra:
        detail = (f"{len(missing)} network modules are missing from the weights (e.g. `{missing[0]}`)" if missing
                  else f"the weights hold {len(extra)} modules the network lacks (e.g. `{extra[0]}`)")
        raise UserError(f"The weights do not match this network: {detail}; use the include/exclude patterns, ranks "
                        f"and algorithm the weights were trained with.")


def _check_dora(adapters: dict[str, AdapterModule], groups: Groups, by_prefix: dict[str, AdapterModule],
                file_dora: bool) -> None:
    network_dora = any(adapter.use_dora for adapter in adapters.values())
    if network_dora and not file_dora:
        raise UserError("DoRA flag mismatch: network expects DoRA but weights lack it (no dora_scale); remove "
                        "use_dora=True or load DoRA-trained weights.")
    if file_dora and not network_dora:
        log.warning("DoRA flag mismatch: weights contain DoRA but network doesn't expect it; the DoRA magnitudes "
                    "are ignored (add use_dora=True for DoRA behaviour).")
    for prefix, adapter in by_prefix.items():
        if adapter.use_dora and "dora_scale" not in groups[prefix]:
            raise UserError(f"DoRA flag mismatch: network expects DoRA on `{adapter.wan_name}` but the weights have "
                            f"no dora_scale for it; load the weights with the DoRA settings they were trained with.")


def adapters_from_weights(model: nn.Module, state: Mapping[str, torch.Tensor],
                          multiplier: float = 1.0) -> dict[str, AdapterModule]:
    """New adapters exactly as the weights describe them (modules, algorithm, ranks, scales, DoRA)."""
    layers_by_prefix = {lora_key_prefix(name): (name, layer) for name, layer in adaptable_layers(model).items()}
    adapters: dict[str, AdapterModule] = {}
    for prefix, parts in group_state(state).items():
        if prefix not in layers_by_prefix:
            raise UserError(f"The weights adapt `{prefix}`, which this model does not have; the file is for "
                            f"another model (or another Wan variant).")
        name, layer = layers_by_prefix[prefix]
        adapters[name] = adapter_from_canonical(name, layer, parts, multiplier=multiplier)
    if not adapters:
        raise UserError("The weights hold no adapter tensors; pick a LoRA / LoHa / LoKr file.")
    position = {prefix: index for index, prefix in enumerate(layers_by_prefix)}
    return dict(sorted(adapters.items(), key=lambda item: position[lora_key_prefix(item[0])]))


def require_dora_on_linears(adapters: dict[str, AdapterModule]) -> None:
    """Weights marked use_dora must carry a magnitude for every Linear (convolutions fall back to plain LoRA)."""
    for name, adapter in adapters.items():
        if not adapter.use_dora and not adapter.is_conv:
            raise UserError(f"The weights are marked use_dora but `{name}` has no dora_scale; the file is incomplete, "
                            f"so it cannot be applied as DoRA.")


def most_common_rank(adapters: dict[str, AdapterModule]) -> int:
    ranks = Counter(getattr(adapter, "rank", None) for adapter in adapters.values())
    ranks.pop(None, None)
    return ranks.most_common(1)[0][0] if ranks else 1

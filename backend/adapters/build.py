"""Creating a network's adapter modules from a model and a NetworkConfig (the targets, their ranks, DoRA fallbacks).

DoRA applies to Linear layers without neuron dropout or rank dropout (module dropout is fine); elsewhere the module
falls back to the plain algorithm and one log line sums it up, e.g.
`DoRA enabled on 45 modules, disabled on: 12 non-Linear, 3 dropout`.
"""
from __future__ import annotations

import logging

import torch.nn as nn

from backend.adapters.adapter_base import CONV_TYPES, AdapterModule
from backend.adapters.deltas import alpha_scale
from backend.adapters.loha import LoHaAdapter
from backend.adapters.lokr import LoKrAdapter
from backend.adapters.lora import LoRAAdapter
from backend.adapters.network_config import NetworkConfig
from backend.adapters.targets import adaptable_layers, candidate_names, select_targets
from backend.errors import UserError

log = logging.getLogger("backend.adapters")


def build_adapters(model: nn.Module, config: NetworkConfig) -> dict[str, AdapterModule]:
    """Wan name -> new adapter (not attached yet), in module order."""
    layers = adaptable_layers(model)
    candidates = candidate_names(layers, config.adapts_conv)
    names = select_targets(candidates, config.args.exclude_patterns or (), config.args.include_patterns or ())
    if not names:
        raise UserError("The include/exclude patterns leave no module to adapt; loosen exclude_patterns or add "
                        "include_patterns for the modules you want.")
    if config.args.exclude_mod is not None:
        log.warning("network_args exclude_mod applies to Qwen-Image's img_mod/txt_mod layers; Wan has none, "
                    "so it changes nothing here.")
    adapters = {name: _create(name, layers[name], config) for name in names}
    if config.use_dora:
        _log_dora_summary(adapters, config)
    if config.args.verbose:
        log_modules(adapters)
    return adapters


def _create(name: str, layer: nn.Module, config: NetworkConfig) -> AdapterModule:
    is_conv = isinstance(layer, CONV_TYPES)
    rank = config.rank_for(name, is_conv)
    alpha = config.alpha_for(is_conv)
    common = {"multiplier": config.multiplier, "dropout": config.dropout, "rank_dropout": config.rank_dropout,
              "module_dropout": config.module_dropout, "use_dora": dora_allowed(config, is_conv)}
    if config.family == "lokr":
        return LoKrAdapter.create(name, layer, rank, alpha, factor=config.factor, use_rslora=config.use_rslora,
                                  **common)
    adapter_class = LoHaAdapter if config.family == "loha" else LoRAAdapter
    return adapter_class(name, layer, rank, alpha_scale(alpha, rank, config.use_rslora), **common)


def dora_allowed(config: NetworkConfig, is_conv: bool) -> bool:
    return config.use_dora and not is_conv and not config.dropout and not config.rank_dropout


def _log_dora_summary(adapters: dict[str, AdapterModule], config: NetworkConfig) -> None:
    enabled = sum(adapter.use_dora for adapter in adapters.values())
    non_linear = sum(adapter.is_conv for adapter in adapters.values())
    by_dropout = len(adapters) - enabled - non_linear
    reasons = [f"{count} {why}" for count, why in ((non_linear, "non-Linear"), (by_dropout, "dropout")) if count]
    line = f"DoRA enabled on {enabled} modules" + (f", disabled on: {', '.join(reasons)}" if reasons else "")
    (log.warning if enabled == 0 else log.info)(line)


def log_modules(adapters: dict[str, AdapterModule]) -> None:
    total = 0
    for name, adapter in adapters.items():
        count = adapter.parameter_count()
        total += count
        rank = getattr(adapter, "rank", None)
        log.info("adapter %s: %s%s rank %s scale %.6g weight %s, %d params", name, adapter.algo,
                 "+dora" if adapter.use_dora else "", rank, adapter.scale, tuple(adapter.weight_shape), count)
    log.info("%d adapted modules, %d trainable parameters", len(adapters), total)

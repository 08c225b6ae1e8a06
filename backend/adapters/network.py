"""AdapterNetwork: a set of adapter modules on one model, switched, weighted, merged and saved as one.

    network = AdapterNetwork.create(transformer, NetworkConfig.from_network_args(16, 8, ["use_dora=True"]))
    network.inject()                      # forward hooks; the model's modules and state-dict keys stay as they are
    network.multiplier = 0.7              # runtime strength; network.enabled = False switches it off
    network.merge_into_model()            # W += 0.7·ΔW; network.unmerge() restores the weights exactly
    network.remove()                      # back to the untouched model

Several networks can sit on one model at once; on a shared layer their output deltas add, each computed from the
layer's own input and base output. The network is an nn.Module (its parameters are the adapters'); dropouts act
only while both it and the model are in training mode.
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch
import torch.nn as nn

from backend.adapters import hooks
from backend.adapters.adapter_base import AdapterModule
from backend.adapters.build import build_adapters, log_modules
from backend.adapters.dora_base import base_fingerprint, file_base_warning
from backend.adapters.loading import (adapters_from_weights, flag_value, load_into, most_common_rank,
                                      require_dora_on_linears)
from backend.adapters.merge import merge_adapter, unmerge_adapter
from backend.adapters.network_args import NetworkArgs
from backend.adapters.network_config import NetworkConfig
from backend.models.names import lora_key_prefix

log = logging.getLogger("backend.adapters")
SAVED_DORA_CONVENTION = "base_norm"  # ComfyUI applies `dora_scale` [out, 1] this way, so files are written in it


class AdapterNetwork(nn.Module):
    def __init__(self, model: nn.Module, adapters: Mapping[str, AdapterModule], config: NetworkConfig,
                 name: str = "network") -> None:
        super().__init__()
        self.name = name
        self.config = config
        self._model = (model,)  # not a submodule: the network's parameters are only the adapters'
        self.adapters = nn.ModuleDict({lora_key_prefix(wan_name): adapter for wan_name, adapter in adapters.items()})

    # --- construction ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, model: nn.Module, config: NetworkConfig, name: str = "network") -> "AdapterNetwork":
        """Fresh, trainable adapters on the config's targets (LoRA up / LoHa w2a / LoKr w2: zeros, so ΔW = 0)."""
        return cls(model, build_adapters(model, config), config, name)

    @classmethod
    def from_weights(cls, model: nn.Module, state: Mapping[str, torch.Tensor],
                     flags: Mapping[str, object] | None = None, *, multiplier: float = 1.0,
                     name: str = "network") -> "AdapterNetwork":
        """A network exactly as canonical weights describe it (modules, algorithm, per-module ranks and scales)."""
        adapters = adapters_from_weights(model, state, multiplier)
        if flag_value((flags or {}).get("use_dora")):
            require_dora_on_linears(adapters)
        for adapter in adapters.values():  # a ComfyUI-convention file is applied exactly as ComfyUI applies it
            adapter.adopt_dora_convention((flags or {}).get("dora_convention") or "merged_norm", keep=True)
        first = next(iter(adapters.values()))
        has_dora = any(adapter.use_dora for adapter in adapters.values())
        rank = most_common_rank(adapters)
        algo = "dora" if has_dora and first.algo == "lora" else first.algo
        args = NetworkArgs(algo=algo, use_dora=has_dora or None,
                           use_rslora=flag_value((flags or {}).get("use_rslora")) or None)
        config = NetworkConfig(rank=rank, alpha=first.scale * rank, args=args, multiplier=multiplier)
        return cls(model, adapters, config, name)

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def modules_by_name(self) -> dict[str, AdapterModule]:
        """Wan module name -> adapter, in module order."""
        return {adapter.wan_name: adapter for adapter in self.adapters.values()}

    # --- injection and runtime switches ------------------------------------------------------------------------
    def inject(self) -> "AdapterNetwork":
        for adapter in self.adapters.values():
            hooks.attach(adapter)
        return self

    def remove(self) -> None:
        """Unmerge if merged, then detach every adapter: the model is exactly as before."""
        self.unmerge()
        for adapter in self.adapters.values():
            hooks.detach(adapter)

    @property
    def injected(self) -> bool:
        return any(hooks.is_attached(adapter) for adapter in self.adapters.values())

    @property
    def multiplier(self) -> float:
        return next(iter(self.adapters.values())).multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        for adapter in self.adapters.values():
            adapter.multiplier = float(value)

    @property
    def enabled(self) -> bool:
        return next(iter(self.adapters.values())).enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        for adapter in self.adapters.values():
            adapter.enabled = bool(value)

    # --- merge -------------------------------------------------------------------------------------------------
    def merge_into_model(self, multiplier: float | None = None) -> None:
        """Write W + multiplier·ΔW into every adapted layer (default: the network's multiplier)."""
        for adapter in self.adapters.values():
            if not adapter.merged:
                merge_adapter(adapter, multiplier)

    def unmerge(self) -> None:
        for adapter in self.adapters.values():
            unmerge_adapter(adapter)

    @property
    def merged(self) -> bool:
        return any(adapter.merged for adapter in self.adapters.values())

    # --- training ----------------------------------------------------------------------------------------------
    def trainable_params(self) -> list[nn.Parameter]:
        return [param for param in self.parameters() if param.requires_grad]

    def optimizer_param_groups(self, lr: float, loraplus_lr_ratio: float | None = None) -> list[dict]:
        """Optimizer groups. With LoRA+ (the argument, else network_args loraplus_lr_ratio) the "B" side gets
        lr × ratio: LoRA `lora_up`, LoHa `hada_w1_a`/`hada_w2_a`, LoKr `lokr_w1_a`/`lokr_w2_a`; everything else
        (down / "A" factors, full LoKr halves, DoRA magnitudes) keeps lr."""
        ratio = self.config.args.loraplus_lr_ratio if loraplus_lr_ratio is None else loraplus_lr_ratio
        if not ratio:
            return [{"name": "adapter", "params": self.trainable_params(), "lr": lr}]
        base_side, up_side = [], []
        for adapter in self.adapters.values():
            for param_name, param in adapter.named_parameters():
                if param.requires_grad:
                    (up_side if param_name in adapter.up_side_names else base_side).append(param)
        groups = [{"name": "adapter", "params": base_side, "lr": lr},
                  {"name": "adapter_loraplus", "params": up_side, "lr": lr * ratio}]
        return [group for group in groups if group["params"]]

    def log_modules(self) -> None:
        log_modules(self.modules_by_name())

    # --- files -------------------------------------------------------------------------------------------------
    def flags(self) -> dict[str, object]:
        """Header flags of this network's weights: algo, use_dora (some module has a magnitude), use_rslora; with
        DoRA also the convention of the saved `dora_scale` and the fingerprint of the base it was computed on."""
        dora = {adapter.wan_name: adapter.target for adapter in self.adapters.values()
                if adapter.use_dora and adapter.dora_convention != "input_axis"}
        flags: dict[str, object] = {"algo": self.config.algo, "use_dora": any(a.use_dora for a in self.adapters.values()),
                                    "use_rslora": self.config.use_rslora}
        if flags["use_dora"]:
            flags["dora_convention"] = SAVED_DORA_CONVENTION
            if dora and not self.merged:
                flags["dora_base"] = base_fingerprint(dora)
        return flags

    def state_dict_for_save(self) -> dict[str, torch.Tensor]:
        """Canonical musubi / ComfyUI tensors: `lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.alpha`, ...;
        DoRA scales in ComfyUI's convention on the weights this network adapts (see `deltas`)."""
        state = {}
        for prefix, adapter in self.adapters.items():
            for suffix, tensor in adapter.canonical_tensors().items():
                if suffix == "dora_scale":
                    tensor = adapter.dora_scale_as(SAVED_DORA_CONVENTION)
                state[f"{prefix}.{suffix}"] = tensor.detach().clone().contiguous()
        return state

    def load_weights(self, state: Mapping[str, torch.Tensor], flags: Mapping[str, object] | None = None) -> None:
        """Resume: copy canonical weights in, with the rsLoRA / DoRA flag rules (see loading.py)."""
        load_into(self.modules_by_name(), self.config.use_rslora, self.config.algo, state, flags)
        for adapter in self.adapters.values():  # training learns m over ||W + ΔW||: convert on this base
            adapter.adopt_dora_convention((flags or {}).get("dora_convention") or "merged_norm", keep=False)
        warning = file_base_warning(self.model, flags or {}, "The initial weights")
        if warning:
            log.warning(warning)

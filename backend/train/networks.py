"""The trained part: frozen Wan transformer(s) with an adapter network each, and the module that runs them.

`Denoiser` is what accelerate wraps (DDP on several processes): its parameters are only the adapters', and its
forward routes each sample to the expert that owns its timestep (Wan2.2 A14B) so one call serves a whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from backend.adapters.formats import load_lora
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.errors import UserError
from backend.loraid.allocation import Allocation, allocate
from backend.loraid.patterns import network_args_entries
from backend.models.loading import load_transformer
from backend.models.registry import ModelKind
from backend.train.memory import check_memory_settings, check_offload_settings

SINGLE = "single"  # label of the network of a single-transformer model


@dataclass(frozen=True)
class ExpertPlan:
    """Which transformers train, and the timestep range each one owns (fractions of 1)."""

    experts: tuple[str | None, ...]  # (None,) | ("high",) | ("low",) | ("high", "low")
    boundary: float | None

    @classmethod
    def from_settings(cls, settings, kind: ModelKind) -> "ExpertPlan":
        if not kind.has_experts:
            return cls((None,), None)
        boundary = settings.timestep_boundary if settings.timestep_boundary is not None else kind.timestep_boundary
        experts = ("high", "low") if settings.expert == "both" else (settings.expert,)
        return cls(experts, boundary)

    @property
    def labels(self) -> list[str]:
        return [expert or SINGLE for expert in self.experts]


def network_args_for(settings, allocation: Allocation | None) -> list[str]:
    """settings.network_args + `algo=` from network_type + the LORAID slice's include/exclude patterns."""
    args = list(settings.network_args)
    keys = {item.split("=", 1)[0].strip() for item in args}
    if settings.network_type != "lora" and "algo" not in keys:
        args.append(f"algo={settings.network_type}")
    if allocation is not None:
        if keys & {"include_patterns", "exclude_patterns"}:
            named = type(settings).named
            raise UserError(f"{named('loraid')} sets include/exclude patterns itself; remove include_patterns / "
                            f"exclude_patterns from {named('network_args')} or leave the LORAID empty.")
        args += network_args_entries(allocation)
    return args


def loraid_allocation(settings, kind: ModelKind, plan: ExpertPlan) -> Allocation | None:
    if settings.loraid is None:
        return None
    expert = settings.expert if kind.has_experts else None
    return allocate(settings.loraid, kind.num_blocks, settings.blocks_per_loraid, expert=expert, model=kind.name)


def build_networks(settings, kind: ModelKind, plan: ExpertPlan, dit_paths: dict[str, object], dtype: torch.dtype,
                   network_args: list[str]) -> tuple[dict[str, nn.Module], dict[str, AdapterNetwork]]:
    """Load and freeze each transformer, inject a fresh (or initial-weights) network; label -> model / network."""
    config = NetworkConfig.from_network_args(settings.network_dim, settings.network_alpha, network_args)
    check_memory_settings(settings, config.use_dora)
    check_offload_settings(settings, kind.num_blocks, kind.label)
    models, networks = {}, {}
    for label, expert in zip(plan.labels, plan.experts):
        model = load_transformer(dit_paths[label], kind.name, dtype=dtype, expert=expert,
                                 storage="fp8_scaled" if settings.fp8_scaled else None,
                                 work_device="cuda" if torch.cuda.is_available() else None)
        model.requires_grad_(False)
        if settings.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        network = AdapterNetwork.create(model, config, name=label)
        if not network.adapters:
            raise UserError("network_args leave no module to train; loosen exclude_patterns or pick another LORAID.")
        if settings.network_weights:
            initial = load_lora(settings.network_weights)
            network.load_weights(initial.tensors, initial.flags)
        network.inject()
        models[label], networks[label] = model, network
    return models, networks


class Denoiser(nn.Module):
    """velocity = model(x_t, t·1000, text) for each sample, routed by t to its expert (boundary) when there are two."""

    def __init__(self, models: dict[str, nn.Module], networks: dict[str, AdapterNetwork], plan: ExpertPlan,
                 own_base: bool = False) -> None:
        """`own_base`: register the frozen transformers as submodules (FSDP shards what the module owns); else a
        plain dict keeps them out of this module's parameters (DDP then replicates only the adapters)."""
        super().__init__()
        self._models = models
        if own_base:
            self.base = nn.ModuleDict(models)
        self.networks = nn.ModuleDict(networks)
        self.plan = plan

    def train(self, mode: bool = True) -> "Denoiser":
        super().train(mode)
        for model in self._models.values():
            model.train(mode)
        return self

    def _run(self, label: str, hidden_states, t, text) -> torch.Tensor:
        return self._models[label](hidden_states=hidden_states, timestep=t * 1000.0, encoder_hidden_states=text,
                                   return_dict=False)[0]

    def forward(self, hidden_states: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        labels = self.plan.labels
        if len(labels) == 1:
            return self._run(labels[0], hidden_states, t, text)
        high = t >= self.plan.boundary
        out = None
        for label, mask in (("high", high), ("low", ~high)):
            if mask.any():
                part = self._run(label, hidden_states[mask], t[mask], text[mask])
                if out is None:
                    out = part.new_zeros((hidden_states.shape[0], *part.shape[1:]))
                out[mask] = part
        return out

"""MoeNetwork: the expert layers, the router and the timestep gate of one transformer, and the hook that routes.

    network = MoeNetwork.create(transformer, spec)   # spec: MoeSpec (experts, ranks, targets, router)
    network.inject()                                  # a pre-forward hook on the transformer + one hook per layer
    network.set_hint(one_hot)                         # hint routing for the next calls ([B, E] or None)

Each transformer call first runs the router on (latents, t, text) of that call, stores gates and τ in the shared
RoutingState, then the layers mix their experts with them. Nothing is detached: the loss reaches router and gate.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from backend.adapters import hooks
from backend.adapters.deltas import alpha_scale
from backend.adapters.network_config import NetworkConfig
from backend.adapters.targets import adaptable_layers, candidate_names, select_targets
from backend.errors import UserError
from backend.models.names import lora_key_prefix
from backend.moe.experts import MoeLoraAdapter, RoutingState
from backend.moe.gate import DEFAULT_KNOTS, TimestepGate
from backend.moe.router import Router, RoutingEma, top_k_gates

ROUTING_MODES = ("learned", "hint", "learned+hint")


@dataclass(frozen=True)
class MoeSpec:
    """Everything that decides the shape of a LoRA-MoE network (stored in the file's metadata)."""

    expert_names: tuple[str, ...]
    rank: int = 4
    alpha: float = 1.0
    network_args: tuple[str, ...] = ()  # rank_q / rank_kvo / rank_ffn / include_patterns / exclude_patterns ...
    routing_mode: str = "learned"
    router_inputs: str = "text"
    router_hidden: int = 64
    top_k: int = 2
    gate_knots: int = DEFAULT_KNOTS

    def __post_init__(self) -> None:
        if len(self.expert_names) < 2:
            raise UserError("LoRA-MoE needs at least 2 experts; name them, e.g. expert_names = [\"a\", \"b\"].")
        if len(set(self.expert_names)) != len(self.expert_names):
            raise UserError(f"expert names must differ; got {list(self.expert_names)}.")
        if self.routing_mode not in ROUTING_MODES:
            raise UserError(f"routing_mode `{self.routing_mode}` is unknown; use one of {', '.join(ROUTING_MODES)}.")
        if not 1 <= self.top_k <= len(self.expert_names):
            raise UserError(f"top_k={self.top_k} must be between 1 and the number of experts "
                            f"({len(self.expert_names)}).")

    @property
    def num_experts(self) -> int:
        return len(self.expert_names)

    @property
    def use_dora(self) -> bool:
        return NetworkConfig.from_network_args(self.rank, self.alpha, list(self.network_args)).use_dora

    def to_dict(self) -> dict:
        data = asdict(self)
        data["expert_names"], data["network_args"] = list(self.expert_names), list(self.network_args)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "MoeSpec":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["expert_names"] = tuple(known["expert_names"])
        known["network_args"] = tuple(known.get("network_args", ()))
        return cls(**known)

    def expert_index(self, name: str) -> int:
        if name not in self.expert_names:
            raise UserError(f"there is no expert `{name}`; the experts are {', '.join(self.expert_names)}.")
        return self.expert_names.index(name)


class MoeNetwork(nn.Module):
    def __init__(self, model: nn.Module, spec: MoeSpec, adapters: dict[str, MoeLoraAdapter], router: Router,
                 gate: TimestepGate, state: RoutingState, name: str = "single") -> None:
        super().__init__()
        self.spec, self.name, self.state = spec, name, state
        self._model = (model,)
        self.adapters = nn.ModuleDict({lora_key_prefix(n): adapter for n, adapter in adapters.items()})
        self.router, self.gate = router, gate
        self.hint: torch.Tensor | None = None  # [B, E] one-hot (hint mode, or a forced expert at inference)
        self.record_history = False
        self.ema: RoutingEma | None = None  # inference only
        self._handle = None

    @classmethod
    def create(cls, model: nn.Module, spec: MoeSpec, name: str = "single") -> "MoeNetwork":
        config = NetworkConfig.from_network_args(spec.rank, spec.alpha, list(spec.network_args))
        if config.family != "lora":
            raise UserError("LoRA-MoE experts are LoRA or DoRA (use_dora=True); remove algo from the network_args.")
        layers = adaptable_layers(model)
        names = select_targets(candidate_names(layers, False), config.args.exclude_patterns or (),
                               config.args.include_patterns or ())
        if not names:
            raise UserError("the include/exclude patterns leave no module for the experts; loosen them.")
        state = RoutingState()
        adapters = {}
        for wan_name in names:
            rank = config.rank_for(wan_name, False)
            adapters[wan_name] = MoeLoraAdapter(wan_name, layers[wan_name], spec.num_experts, rank,
                                                alpha_scale(spec.alpha, rank, config.use_rslora), state,
                                                use_dora=config.use_dora, dropout=config.dropout)
        model_config = model.config
        router = Router(spec.num_experts, spec.router_inputs, int(model_config.text_dim),
                        int(model_config.in_channels), spec.router_hidden, spec.top_k)
        device = next(model.parameters()).device
        return cls(model, spec, adapters, router.to(device), TimestepGate(spec.gate_knots).to(device), state, name)

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    # --- injection ---------------------------------------------------------------------------------------------
    def inject(self) -> "MoeNetwork":
        if self._handle is None:
            self._handle = self.model.register_forward_pre_hook(self._route, with_kwargs=True)
        for adapter in self.adapters.values():
            hooks.attach(adapter)
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for adapter in self.adapters.values():
            hooks.detach(adapter)

    def set_hint(self, hint: torch.Tensor | None) -> None:
        self.hint = hint

    def set_strengths(self, strengths: list[float] | None) -> None:
        self.state.strengths = None if strengths is None else torch.tensor(strengths, dtype=torch.float32)

    def _route(self, model: nn.Module, args: tuple, kwargs: dict):
        names = ("hidden_states", "timestep", "encoder_hidden_states")
        values = dict(zip(names, args))
        values.update({k: kwargs[k] for k in names if k in kwargs})
        latents, timestep, text = values["hidden_states"], values["timestep"], values["encoder_hidden_states"]
        t = timestep.float()
        if t.dim() > 1:  # per-token timesteps (TI2V): one t per sample for routing
            t = t.flatten(1).mean(1)
        t = (t / 1000.0).expand(latents.shape[0]) if t.numel() == 1 else t / 1000.0
        self.route(latents, t, text)
        return None

    def route(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Compute and store gates and τ for one call; returns the gates [B, E]."""
        batch, device = latents.shape[0], latents.device
        logits = self.router(latents, t.to(device), text.to(device))
        probs = torch.softmax(logits, dim=-1)
        hint = self.hint
        if hint is not None and (self.spec.routing_mode == "hint" or not self.training):
            gates = hint.to(device, torch.float32)
            if gates.shape[0] != batch:
                gates = gates[:1].expand(batch, -1)
        elif self.spec.routing_mode == "hint":
            gates = torch.full((batch, self.spec.num_experts), 1.0 / self.spec.num_experts, device=device)
        else:
            gates = top_k_gates(probs, self.spec.top_k)
            if self.ema is not None and not self.training:
                gates = self.ema(gates, text)
        self.state.gates = gates
        self.state.tau = self.gate(t.to(device))
        if self.record_history:
            self.state.history.append((logits, probs, gates, round(float(text.detach().float().sum()), 3)))
        return gates

    # --- training ----------------------------------------------------------------------------------------------
    def param_groups(self, lr: float, router_lr: float, gate_lr: float) -> list[dict]:
        experts = [p for a in self.adapters.values() for p in a.parameters()]
        groups = [{"name": f"{self.name}-experts", "params": experts, "lr": lr}]
        if self.spec.routing_mode != "hint":
            groups.append({"name": f"{self.name}-router", "params": list(self.router.parameters()), "lr": router_lr})
        groups.append({"name": f"{self.name}-gate", "params": list(self.gate.parameters()), "lr": gate_lr})
        return groups

    def modules_by_name(self) -> dict[str, MoeLoraAdapter]:
        return {adapter.wan_name: adapter for adapter in self.adapters.values()}

"""One targeted Linear with E expert LoRAs, mixed by the gates of the current call.

    delta = τ(t)[b] · Σ_e g[b, e] · strength_e · s · B_e A_e x[b]

The gates and τ come from the network's `RoutingState`, set by a pre-forward hook on the transformer for every call
(see network.py), so one routing decision per sample serves every layer. Experts start like any LoRA: A Kaiming-
uniform, B zeros (the mixture adds nothing until the experts learn).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from backend.adapters.adapter_base import AdapterModule
from backend.errors import UserError


@dataclass
class RoutingState:
    """What the layers of one transformer read during a call: gates [B, E], τ [B], per-expert strengths [E]."""

    gates: torch.Tensor | None = None
    tau: torch.Tensor | None = None
    strengths: torch.Tensor | None = None
    history: list = field(default_factory=list)  # (logits, probs, gates, text key) of the calls since the last `take()`

    def take(self) -> list:
        taken, self.history = self.history, []
        return taken


class MoeLoraAdapter(AdapterModule):
    algo = "lora_moe"
    up_side_names = ("lora_up",)

    def __init__(self, wan_name: str, target: nn.Module, num_experts: int, rank: int, scale: float,
                 state: RoutingState, **common) -> None:
        super().__init__(wan_name, target, **common)
        if not isinstance(target, nn.Linear):
            raise UserError(f"LoRA-MoE experts adapt Linear layers only; `{wan_name}` is a "
                            f"{type(target).__name__}; exclude it with exclude_patterns.")
        out_features, in_features = target.weight.shape
        self.num_experts, self.rank, self.scale = int(num_experts), int(rank), float(scale)
        factory = {"device": target.weight.device, "dtype": torch.float32}
        self.lora_down = nn.Parameter(torch.empty(self.num_experts, self.rank, in_features, **factory))
        self.lora_up = nn.Parameter(torch.zeros(self.num_experts, out_features, self.rank, **factory))
        for e in range(self.num_experts):
            nn.init.kaiming_uniform_(self.lora_down.data[e], a=math.sqrt(5))
        self._state = (state,)

    @property
    def state(self) -> RoutingState:
        return self._state[0]

    def output_delta(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state.gates is None:
            raise RuntimeError(f"{self.wan_name}: no routing for this call; the LoRA-MoE network was not injected "
                               f"with its transformer hook.")
        gates = state.gates.to(x.dtype)
        if state.strengths is not None:
            gates = gates * state.strengths.to(x.dtype)
        gates = gates * state.tau.to(x.dtype)[:, None]
        batch = x.shape[0]
        if gates.shape[0] != batch:
            raise RuntimeError(f"{self.wan_name}: routing for {gates.shape[0]} samples, input has {batch}")
        hidden = torch.einsum("b...i,eri->b...er", self.neuron_dropout(x), self.lora_down)
        hidden = hidden * gates.reshape(batch, *([1] * (hidden.dim() - 3)), self.num_experts, 1)
        out = torch.einsum("b...er,eor->b...o", hidden, self.lora_up)
        return self.multiplier * self.scale * out

    def expert_delta(self, expert: int) -> torch.Tensor:
        """s · B_e A_e, the expert's ΔW at gate 1 and τ 1."""
        return self.scale * (self.lora_up[expert].detach() @ self.lora_down[expert].detach())

    def raw_delta(self) -> torch.Tensor:
        raise UserError("a LoRA-MoE layer has no single ΔW (it depends on the routing); export one expert with "
                        "`python -m backend moe export` to merge it.")

"""A LoRA-MoE file on a generation session's transformers: learned or hinted routing, per-expert strengths, the
inference-only router EMA, and the routing weights the router chose (for the Generate tab and the result record).

    moe = MoeRequest("moe.safetensors", hint="red", strengths={"blue": 0.5})
    attached = attach_moe(session.model.transformers, moe)    # role -> MoeNetwork, eval mode
    ... denoise ...
    attached.routing_summary()   # {"high": {"red": 0.93, "blue": 0.07, "tau": 1.1}, ...} (mean over the calls)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from backend.errors import UserError
from backend.moe.files import MoeFile, load_into, load_moe, stage1_fingerprint
from backend.moe.network import MoeNetwork
from backend.moe.router import RoutingEma

ROLE_TO_LABEL = {"main": "single", "high": "high", "low": "low"}


@dataclass(frozen=True)
class MoeRequest:
    path: str
    hint: str | None = None
    strengths: dict[str, float] = field(default_factory=dict)  # expert name (or "*" for all) -> strength
    router_ema: float | None = None  # None: the file's default


def parse_strengths(items: list[str] | None) -> dict[str, float]:
    """["red=0.8", "*=1.2"] -> {"red": 0.8, "*": 1.2}."""
    out = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            value = None
        if not eq or value is None or not name.strip():
            from backend.generate.options import named

            raise UserError(f"{named('expert_strength')} `{item}`: write NAME=VALUE, e.g. `red=0.8`.")
    return out


class AttachedMoe:
    def __init__(self, moe: MoeFile, request: MoeRequest, networks: dict[str, MoeNetwork],
                 warnings: list[str]) -> None:
        self.moe, self.request, self.networks, self.warnings = moe, request, networks, warnings

    def reset(self) -> None:
        """Before each prompt: forget the EMA state and the recorded routing."""
        for network in self.networks.values():
            if network.ema is not None:
                network.ema.reset()
            network.state.take()

    def routing_summary(self) -> dict[str, dict[str, float]]:
        """Per transformer: the mean gate of each expert over the calls with the prompt's text (the pipeline's first
        call of a step is the conditional one; the unconditional calls with the negative prompt are left out)."""
        summary = {}
        for label, network in self.networks.items():
            calls = network.state.history
            if not calls:
                continue
            prompt_key = calls[0][3]
            gates = torch.stack([g[0] for _, _, g, key in calls if key == prompt_key]).float().mean(0)
            summary[label] = {name: round(float(g), 4) for name, g in zip(self.moe.spec.expert_names, gates)}
        return summary

    def record(self) -> dict:
        """What the result record says about the MoE: file, hint, strengths, the routing chosen."""
        return {"file": self.moe.path.name if self.moe.path else None,
                "path": str(self.moe.path) if self.moe.path else None, "experts": list(self.moe.spec.expert_names),
                "hint": self.request.hint, "strengths": dict(self.request.strengths),
                "router_ema": self.request.router_ema, "routing": self.routing_summary()}

    def remove(self) -> None:
        for network in self.networks.values():
            network.remove()


def strength_vector(moe: MoeFile, strengths: dict[str, float]) -> list[float] | None:
    if not strengths:
        return None
    names = moe.spec.expert_names
    default = strengths.get("*", 1.0)
    for name in strengths:
        if name != "*":
            moe.spec.expert_index(name)
    return [strengths.get(name, default) for name in names]


def attach_moe(transformers: dict[str, object], request: MoeRequest) -> AttachedMoe:
    moe = load_moe(request.path)
    hint = None
    if request.hint:
        hint = torch.zeros(1, moe.spec.num_experts)
        hint[0, moe.spec.expert_index(request.hint)] = 1.0
    strengths = strength_vector(moe, request.strengths)
    beta = moe.header.get("router_ema", 0.0) if request.router_ema is None else request.router_ema
    networks, warnings = {}, []
    for role, transformer in transformers.items():
        label = ROLE_TO_LABEL[role]
        if label not in moe.labels:
            if len(transformers) == 1 and len(moe.labels) == 1:
                label = moe.labels[0]
            else:
                warnings.append(f"{moe.path.name} has no experts for the {label} transformer; it runs without them.")
                continue
        device = next(transformer.parameters()).device
        network = MoeNetwork.create(transformer, moe.spec, name=label)
        load_into(network, moe)
        network.to(device).eval()
        network.set_hint(hint)
        network.set_strengths(strengths)
        network.ema = RoutingEma(beta) if beta else None
        network.record_history = True
        networks[label] = network.inject()
    if not networks:
        raise UserError(f"{moe.path.name} holds experts for {', '.join(moe.labels)}, none of which this model has; "
                        f"pick the model it was trained on.")
    return AttachedMoe(moe, request, networks, warnings)


def check_stage1(moe: MoeFile, dits: dict[str, str]) -> list[str]:
    """Warnings when the DiT files given differ from the stage-1 merge the experts were trained on."""
    warnings = []
    for label, path in dits.items():
        recorded = (moe.header.get("stage1") or {}).get(label)
        if not recorded or not path:
            continue
        now = stage1_fingerprint(path)
        if now["fingerprint"] != recorded.get("fingerprint"):
            warnings.append(f"the {label} DiT {now['dit']} does not hold the stage-1 merge the experts were trained on "
                            f"({recorded.get('dit')}); results may differ. Merge stage 1 with `python -m backend moe "
                            f"merge` and generate on that model.")
    return warnings

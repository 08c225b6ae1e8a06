"""The routing a LoRA-MoE file's router chooses for a prompt, before generating (no transformer is loaded).

    text = prompt_embedding(text_encoder, tokenizer, "loraidA, a red ball")      # [1, 512, D], zero-padded
    routing = route_prompt(load_moe(F), text, timesteps=denoising_timesteps("unipc", 3.0, 30))
    routing["transformers"]["low"]["mean"]    # {"red": 0.97, "blue": 0.03}: what a run records as moe.routing

Each noise expert's router is run on the calls that expert takes in a run (the conditional pass of each denoising
step at or above the model's boundary for `high`, below it for `low`) through `MoeNetwork.route`, the code a run
uses, so hints, top-k and the router EMA act as they do there. The router reads the pooled text embedding and the
timestep, which are known before a run; a router that also reads latent statistics (router_inputs with "latent")
is shown on the seed's starting noise at every step, and the result says `approximate` (a run's later latents
depend on the video being denoised).
"""
from __future__ import annotations

import torch

from backend.errors import UserError
from backend.models.registry import MODEL_KINDS
from backend.moe.experts import RoutingState
from backend.moe.files import MoeFile
from backend.moe.gate import TimestepGate
from backend.moe.network import MoeNetwork
from backend.moe.router import TIME_FREQUENCIES, Router, RoutingEma

LABEL_ORDER = ("high", "low", "single")


def denoising_timesteps(sampler: str, flow_shift: float, steps: int) -> list[float]:
    """The timesteps (0-1000) a run with these settings passes to the transformer, first to last."""
    from backend.generate.settings import make_scheduler

    if steps < 1:
        raise UserError(f"steps={steps}: give at least 1 denoising step.")
    scheduler = make_scheduler(sampler, flow_shift)
    scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]


def prompt_embedding(text_encoder, tokenizer, prompt: str) -> torch.Tensor:
    """[1, 512, D]: the prompt's UMT5 states, zero-padded as the pipeline gives them to the transformer."""
    from backend.data.encoders import encode_prompts, pad_text_embeds

    padded, _ = pad_text_embeds(encode_prompts(tokenizer, text_encoder, [prompt]))
    return padded.float()


def boundary_of(moe: MoeFile, boundary_ratio: float | None) -> float | None:
    """The timestep fraction splitting high- from low-noise calls: the one given, else the file's model kind's."""
    if boundary_ratio is not None:
        return boundary_ratio
    if "single" in moe.labels:
        return None
    kind = MODEL_KINDS.get(moe.header.get("model_kind") or "")
    if kind is None or kind.timestep_boundary is None:
        from backend.generate.options import named  # the Generate tab shows this sentence

        raise UserError(f"{moe.path.name if moe.path else 'the file'} has {' and '.join(moe.labels)}-noise experts but "
                        f"its model kind `{moe.header.get('model_kind')}` names no boundary; give the "
                        f"{named('boundary_ratio')}.")
    return kind.timestep_boundary


def latent_channels(moe: MoeFile, label: str, text_dim: int) -> int:
    """The latent channels a router reads statistics of (0 for a text-only router), from its input width."""
    width = moe.part(label)["router.net.0.weight"].shape[1]
    extra = width - 2 * TIME_FREQUENCIES - (text_dim if "text" in moe.spec.router_inputs else 0)
    if extra < 0 or ("latent" in moe.spec.router_inputs) != (extra > 0) or extra % 2:
        raise UserError(f"the router of the `{label}` experts reads {width} features, which does not fit a text "
                        f"embedding of width {text_dim}; use the text encoder of the model it was trained on.")
    return extra // 2


def starting_noise(channels: int, seed: int, size: tuple[int, int, int]) -> torch.Tensor:
    """The noise a run starts from (frames, height, width), drawn as the pipeline draws it (CPU generator)."""
    frames, height, width = size
    factor = 16 if channels == 48 else 8  # the Wan2.2 VAE (48 channels) is 16x spatial, the Wan2.1 one 8x
    shape = (1, channels, (frames - 1) // 4 + 1, height // factor, width // factor)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def network_of(moe: MoeFile, label: str, text_dim: int, hint: torch.Tensor | None, router_ema: float) -> MoeNetwork:
    """The router and gate of one transformer label, in a MoeNetwork without expert layers (nothing to inject)."""
    part = moe.part(label)
    spec = moe.spec
    router = Router(spec.num_experts, spec.router_inputs, text_dim, max(latent_channels(moe, label, text_dim), 1),
                    spec.router_hidden, spec.top_k)
    router.load_state_dict({k[len("router."):]: v for k, v in part.items() if k.startswith("router.")})
    gate = TimestepGate(part["gate.knots"].numel())
    with torch.no_grad():
        gate.knots.copy_(part["gate.knots"])
    network = MoeNetwork(torch.nn.Identity(), spec, {}, router, gate, RoutingState(), label).eval()
    network.set_hint(hint)
    network.ema = RoutingEma(router_ema) if router_ema else None
    return network


@torch.no_grad()
def route_prompt(moe: MoeFile, text: torch.Tensor, timesteps: list[float], *, boundary_ratio: float | None = None,
                 hint: str | None = None, router_ema: float | None = None, seed: int = 0,
                 size: tuple[int, int, int] = (81, 480, 832)) -> dict:
    """Per transformer label: the gates and τ at each of its steps, and their mean (the run's `moe.routing`).
    `seed` and `size` (frames, height, width) give the starting noise a latent-reading router is shown on."""
    hint_row = None
    if hint:
        hint_row = torch.zeros(1, moe.spec.num_experts)
        hint_row[0, moe.spec.expert_index(hint)] = 1.0
    beta = float(moe.header.get("router_ema", 0.0) if router_ema is None else router_ema)
    boundary = boundary_of(moe, boundary_ratio)
    reads_latents = "latent" in moe.spec.router_inputs
    names = moe.spec.expert_names
    out = {}
    for label in sorted(moe.labels, key=LABEL_ORDER.index):
        network = network_of(moe, label, int(text.shape[-1]), hint_row, beta)
        channels = latent_channels(moe, label, int(text.shape[-1]))
        latents = starting_noise(channels, seed, size) if channels else torch.zeros(1, 1)
        steps = []
        for value in timesteps:
            high = boundary is None or value >= boundary * 1000.0
            if label != "single" and (label == "high") != high:
                continue
            t = torch.tensor([value / 1000.0])
            gates = network.route(latents, t, text)
            steps.append({"timestep": round(value, 3), "gates": {n: round(float(g), 4) for n, g in zip(names, gates[0])},
                          "tau": round(float(network.state.tau[0]), 4)})
        if not steps:
            continue
        mean = {n: round(sum(s["gates"][n] for s in steps) / len(steps), 4) for n in names}
        out[label] = {"mean": mean, "tau": round(sum(s["tau"] for s in steps) / len(steps), 4), "steps": steps}
    return {"file": moe.path.name if moe.path else None, "experts": list(names), "hint": hint,
            "routing_mode": moe.spec.routing_mode, "router_inputs": moe.spec.router_inputs,
            "approximate": reads_latents and not hint, "transformers": out}


def format_routing(routing: dict) -> str:
    how = f"forced to {routing['hint']}" if routing["hint"] else "chosen by the router"
    lines = [f"Routing {how} ({routing['file']}):"]
    for label, part in routing["transformers"].items():
        gates = ", ".join(f"{name} {value:.2f}" for name, value in part["mean"].items())
        lines.append(f"- {label}: {gates} (τ {part['tau']:.2f}, {len(part['steps'])} steps)")
    if routing["approximate"]:
        lines.append("The router also reads the latents: shown on the starting noise; a run's later steps may "
                     "route differently.")
    return "\n".join(lines)

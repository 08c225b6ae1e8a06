"""How specific each expert is: each expert alone, as the ordinary LoRA `export` writes, on each label's items.

For expert e and the items labelled c (fixed noise seeds and timesteps, one transformer):
    change[e][c] = mean ‖f_e(x) − f_0(x)‖ / ‖f_0(x)‖      (how much the expert moves the prediction)
    gain[e][c]   = mean (L_0 − L_e) / L_0                  (how much it lowers the flow-matching loss)
where f_0 is the (stage-1-merged) model without experts and L the flow-matching error. A specialised expert has
its largest gain on its own label, and on each label the expert of that label has the largest gain. The gain is
the measure of specialisation: it counts only the change of the output towards the label's data. The change
counts any movement, useful or not, and some items move more than others under any expert (on the demo an expert
that lowers only its own concept's loss can still move the other concept's outputs more), so it is reported, not
judged on.
"""
from __future__ import annotations

import torch

from backend.adapters.network import AdapterNetwork
from backend.moe.files import MoeFile, export_flags, export_tensors
from backend.train.timesteps import add_noise, flow_target

TIMESTEPS = (0.1, 0.3, 0.5, 0.7)
NOISE_SEEDS = (2001, 2002)


@torch.no_grad()
def _predictions(model, batches, timesteps) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for data in batches:
        x0, text = data["latents"].float(), data["text_embeds"].float()
        for seed in NOISE_SEEDS:
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
            for value in timesteps:
                t = torch.full((x0.shape[0],), value)
                v = model(hidden_states=add_noise(x0, noise, t), timestep=t * 1000, encoder_hidden_states=text,
                          return_dict=False)[0]
                out.append((v, flow_target(x0, noise)))
    return out


def expert_specificity(model, moe: MoeFile, label: str, batches_by_expert: dict[str, list[dict]],
                       timesteps=TIMESTEPS) -> dict:
    """{"change": {expert: {label: value}}, "gain": {...}} on the transformer `model` (MoE `label`)."""
    base = {c: _predictions(model, batches, timesteps) for c, batches in batches_by_expert.items()}
    change: dict[str, dict[str, float]] = {}
    gain: dict[str, dict[str, float]] = {}
    for expert in moe.spec.expert_names:
        network = AdapterNetwork.from_weights(model, export_tensors(moe, expert, label),
                                              export_flags(moe, label)).inject()
        try:
            change[expert], gain[expert] = {}, {}
            for c, batches in batches_by_expert.items():
                now = _predictions(model, batches, timesteps)
                moves, gains = [], []
                for (v0, target), (v1, _) in zip(base[c], now):
                    moves.append(float((v1 - v0).norm() / v0.norm()))
                    before, after = float(((v0 - target) ** 2).mean()), float(((v1 - target) ** 2).mean())
                    gains.append((before - after) / before)
                change[expert][c] = sum(moves) / len(moves)
                gain[expert][c] = sum(gains) / len(gains)
        finally:
            network.remove()
    return {"change": change, "gain": gain}

"""Training the demo LoRA: the held-out flow-matching loss falls, and the file is one `inspect` describes."""
from __future__ import annotations

import json

import torch

from backend.__main__ import main as backend_main
from backend.adapters.formats import load_lora
from backend.adapters.network import AdapterNetwork
from backend.data.cached_dataset import CachedDataset
from backend.jobs.protocol import JobContext
from backend.models.loading import load_transformer
from backend.train.loop import train
from backend.train.timesteps import add_noise, flow_target

EVAL_TIMESTEPS = (0.2, 0.5, 0.8)
EVAL_NOISE_SEEDS = (1001, 1002)


def held_out_loss(model, dataset: CachedDataset) -> float:
    """Mean ‖v − (ε − x0)‖² over every cached item at fixed timesteps and fixed noise (seeds unseen in training)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in dataset.epoch_batches(0):
            data = dataset.load_batch(batch)
            x0, text = data["latents"], data["text_embeds"]
            for seed in EVAL_NOISE_SEEDS:
                noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
                for value in EVAL_TIMESTEPS:
                    t = torch.full((x0.shape[0],), value)
                    v = model(hidden_states=add_noise(x0, noise, t), timestep=t * 1000, encoder_hidden_states=text,
                              return_dict=False)[0]
                    total += ((v - flow_target(x0, noise)) ** 2).mean().item()
                    count += 1
    return total / count


def test_thirty_steps_lower_the_held_out_loss(demo_workspace, demo_settings, tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    status = train(demo_settings.with_overrides({"output_dir": str(tmp_path)}), demo_workspace,
                   JobContext(events_path=events), log=lambda *_: None)
    assert status == "succeeded"
    lora_path = tmp_path / "demo-concept-a.safetensors"
    lora = load_lora(lora_path)
    assert lora.metadata["ss_steps"] == "30" and len(lora.modules) == 80

    dataset = CachedDataset.from_file(demo_workspace.demo_dataset / "concept_a" / "dataset.toml")
    model = load_transformer(demo_workspace.demo_t2v / "transformer.safetensors", "demo-t2v").eval()
    before = held_out_loss(model, dataset)
    AdapterNetwork.from_weights(model, lora.tensors, lora.flags).inject()
    after = held_out_loss(model, dataset)
    assert after < 0.97 * before, (before, after)

    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") == 6 and "checkpoint" in kinds
    steps = [json.loads(line) for line in events.read_text().splitlines() if '"step"' in line and '"event": "step"' in line]
    assert {"loss", "avg_loss", "lr", "it_s", "eta_s", "vram"} <= set(steps[-1]) and steps[-1]["step"] == 30

    capsys.readouterr()
    assert backend_main(["inspect", str(lora_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["algo"] == "lora" and info["blocks"] == list(range(8)) and info["metadata"]["ss_steps"] == "30"

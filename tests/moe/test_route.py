"""`moe route`: the gates the router chooses for a prompt before a run, checked against the router computed here
by hand (pooled text, softmax, top-k, renormalised) and against the routing a real generation records."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from backend.__main__ import main as backend_main
from backend.data import encoders
from backend.generate.request import GenerateRequest
from backend.generate.settings import make_scheduler
from backend.models.demo import expert_file
from backend.models.loading import load_transformer
from backend.moe.files import save_moe
from backend.moe.network import MoeNetwork, MoeSpec

SPEC = MoeSpec(expert_names=("red", "blue", "green"), rank=2, alpha=1.0, top_k=2,
               network_args=("exclude_patterns=['.*']", r"include_patterns=['blocks\.7\.ffn.*']"))
PROMPT = "loraidA, a red ball bouncing"


def _moe_file(ws, path):
    """A 3-expert file on the demo A14B pair with random routers (non-trivial gates) and timestep gates."""
    networks = {}
    for index, label in enumerate(("high", "low")):
        model = load_transformer(expert_file(ws, label), "demo-a14b", expert=label)
        torch.manual_seed(10 + index)
        network = MoeNetwork.create(model, SPEC, name=label)
        with torch.no_grad():
            for param in network.router.parameters():
                param.normal_(0.0, 0.5)
            network.gate.knots.normal_(0.0, 1.0)
        networks[label] = network
    return save_moe(path, networks, model_kind="demo-a14b", step=1, stage1={})


def _by_hand(path, ws, timesteps):
    """Mean top-2 gate per expert and label over the steps each noise expert takes (boundary 0.875 of demo-a14b)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    tokenizer, text_encoder = encoders.load_text_encoder(ws.text_encoder, ws.tokenizer)
    tokens = encoders.encode_prompts(tokenizer, text_encoder, [PROMPT])[0]  # [L, D], the prompt's own tokens
    pooled = F.layer_norm(tokens.float().mean(0), tokens.shape[-1:])
    out = {}
    for label, steps in (("high", [t for t in timesteps if t >= 875.0]), ("low", [t for t in timesteps if t < 875.0])):
        w0, b0 = tensors[f"lora_moe.{label}.router.net.0.weight"], tensors[f"lora_moe.{label}.router.net.0.bias"]
        w2, b2 = tensors[f"lora_moe.{label}.router.net.2.weight"], tensors[f"lora_moe.{label}.router.net.2.bias"]
        gates = []
        for t in steps:
            angles = (t / 1000.0) * torch.pi * 2.0 ** torch.arange(8.0) / 2.0
            features = torch.cat([pooled, angles.sin(), angles.cos()])
            probs = torch.softmax(w2 @ F.silu(w0 @ features + b0) + b2, dim=0)
            top = torch.zeros(3)
            kept = probs.argsort(descending=True)[:2]
            top[kept] = probs[kept] / probs[kept].sum()
            gates.append(top)
        out[label] = torch.stack(gates).mean(0)
    return out


def test_route_equals_the_router_by_hand_and_the_routing_a_run_records(moe_workspace, tmp_path, capsys):
    ws = moe_workspace
    path = _moe_file(ws, tmp_path / "moe.safetensors")
    scheduler = make_scheduler("unipc", 3.0)
    scheduler.set_timesteps(6)
    expected = _by_hand(path, ws, [float(t) for t in scheduler.timesteps])
    assert min(expected["low"]) < 0.9  # the random routers really mix

    capsys.readouterr()
    assert backend_main(["moe", "route", "--moe", str(path), "--prompt", PROMPT, "--workspace", str(ws.root),
                         "--steps", "6", "--json"]) == 0
    routing = json.loads(capsys.readouterr().out)
    assert list(routing["transformers"]) == ["high", "low"] and not routing["approximate"]
    for label in ("high", "low"):
        mean = routing["transformers"][label]["mean"]
        torch.testing.assert_close(torch.tensor([mean[n] for n in SPEC.expert_names]), expected[label],
                                   atol=2e-4, rtol=0)
    assert len(routing["transformers"]["high"]["steps"]) + len(routing["transformers"]["low"]["steps"]) == 6

    # a real run with the same prompt and steps records the same routing (its conditional calls)
    assert backend_main(["generate", "--workspace", str(ws.root), "--model", "demo-a14b", "--moe", str(path),
                         "--prompt", PROMPT, "--width", "32", "--height", "32", "--frames", "1", "--steps", "6",
                         "--seed", "3", "--guidance_scale", "2", "--out_dir", str(tmp_path / "gen")]) == 0
    record = json.loads(next((tmp_path / "gen").glob("*.json")).read_text())
    for label in ("high", "low"):
        recorded = record["moe"]["routing"][label]
        for name in SPEC.expert_names:
            assert abs(recorded[name] - routing["transformers"][label]["mean"][name]) < 2e-3, (label, name)
    reused = GenerateRequest.from_record(record).moe  # "Reuse": a file outside loras/ comes back by its path
    assert (reused.moe, reused.hint, reused.router_ema) == (str(path), None, None)
    smoothed = GenerateRequest.from_record({**record, "moe": {**record["moe"], "router_ema": 0.5}})
    assert smoothed.moe.router_ema == 0.5

    # a hint forces every step; the plain text names the gates per noise expert
    assert backend_main(["moe", "route", "--moe", str(path), "--prompt", PROMPT, "--workspace", str(ws.root),
                         "--steps", "6", "--hint", "green"]) == 0
    text = capsys.readouterr().out
    assert "Routing forced to green" in text
    assert "- high: red 0.00, blue 0.00, green 1.00" in text and "- low: red 0.00, blue 0.00, green 1.00" in text

    # a wrong expert name is one sentence
    assert backend_main(["moe", "route", "--moe", str(path), "--prompt", PROMPT, "--workspace", str(ws.root),
                         "--hint", "purple"]) == 2
    assert "there is no expert `purple`; the experts are red, blue, green." in capsys.readouterr().err


def test_a_file_with_low_noise_experts_only_routes_the_steps_below_the_boundary(moe_workspace, tmp_path):
    from backend.moe.files import load_moe
    from backend.moe.route import denoising_timesteps, route_prompt

    model = load_transformer(expert_file(moe_workspace, "low"), "demo-a14b", expert="low")
    path = save_moe(tmp_path / "low.safetensors", {"low": MoeNetwork.create(model, SPEC, name="low")},
                    model_kind="demo-a14b", step=1, stage1={})
    timesteps = denoising_timesteps("unipc", 3.0, 8)
    routing = route_prompt(load_moe(path), torch.randn(1, 7, model.config.text_dim), timesteps)
    steps = [step["timestep"] for step in routing["transformers"]["low"]["steps"]]
    assert list(routing["transformers"]) == ["low"]
    assert steps == [round(t, 3) for t in timesteps if t < 875.0] and 0 < len(steps) < 8

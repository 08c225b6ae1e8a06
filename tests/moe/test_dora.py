"""DoRA experts: the layer against the DoRA formula built from whole weights, gradients of the diffusion loss alone
reaching router and gate, the file round trip of the magnitudes, and one expert exported as an ordinary DoRA LoRA
(`dora_scale`, ComfyUI's convention) that our loader reads back with the output of the MoE hinted to it at τ = 1."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from safetensors import safe_open

from backend.__main__ import main as backend_main
from backend.adapters.formats import load_lora
from backend.adapters.network import AdapterNetwork
from backend.models import demo_parts
from backend.moe.files import export_expert, export_flags, export_tensors, load_into, load_moe, save_moe
from backend.moe.network import MoeNetwork, MoeSpec
from backend.train.timesteps import add_noise, flow_target

SPEC = MoeSpec(expert_names=("red", "blue", "green"), rank=2, alpha=1.0, top_k=2,
               network_args=("exclude_patterns=['.*']", r"include_patterns=['blocks\.(6|7)\..*']", "rank_q=4",
                             "use_dora=True"))


def _model():
    return demo_parts.build_transformer("demo-t2v", 0, part=10).requires_grad_(False).eval()


def _trained(model, spec=SPEC, seed=1):
    """Experts as after training: B non-zero, magnitudes moved off ||W||."""
    torch.manual_seed(seed)
    network = MoeNetwork.create(model, spec)
    with torch.no_grad():
        for adapter in network.adapters.values():
            adapter.lora_up.normal_(0.0, 0.05)
            adapter.magnitude.mul_(1.0 + 0.1 * torch.randn_like(adapter.magnitude))
        for param in network.router.parameters():
            param.normal_(0.0, 0.3)
    return network


def _inputs(model, batch=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, model.config.in_channels, 1, 4, 4, generator=g)
    text = torch.randn(batch, 5, model.config.text_dim, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return x0, text, noise, torch.tensor([0.3, 0.7][:batch])


def _predict(model, x0, text, noise, t):
    return model(hidden_states=add_noise(x0, noise, t), timestep=t * 1000, encoder_hidden_states=text,
                 return_dict=False)[0]


def test_layer_mixes_each_experts_whole_dora_update(tmp_path):
    model = _model()
    network = _trained(model)
    adapter = network.adapters["lora_unet_blocks_7_ffn_0"]
    layer = adapter.target
    state = network.state
    state.gates = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    state.tau = torch.tensor([1.3, 0.8])
    state.strengths = torch.tensor([1.0, 0.5, 2.0])
    x = torch.randn(2, 5, layer.in_features)
    base_out = layer(x)
    got = adapter.output_delta(x, base_out)

    weight = layer.weight.float()
    expected = torch.zeros_like(base_out)
    for e in range(3):
        adapted = weight + adapter.scale * adapter.lora_up[e].detach() @ adapter.lora_down[e].detach()
        dora = adapter.magnitude[e].detach()[:, None] * adapted / adapted.norm(dim=1, keepdim=True)
        update = F.linear(x, dora) - F.linear(x, weight)  # DoRA_e(x) − W x (the bias is not rescaled)
        g = state.gates[:, e] * state.strengths[e] * state.tau
        expected += g[:, None, None] * update
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # a fresh DoRA expert (B = 0, m = ||W||) changes nothing
    fresh = MoeNetwork.create(model, SPEC).adapters["lora_unet_blocks_7_ffn_0"]
    fresh._state = (state,)
    assert fresh.output_delta(x, base_out).abs().max() < 1e-5


def test_diffusion_loss_alone_gives_router_gate_and_magnitude_gradients():
    model = _model()
    network = _trained(model, MoeSpec(**{**SPEC.to_dict(), "expert_names": ("a", "b", "c"),
                                         "network_args": tuple(SPEC.network_args)})).inject()
    try:
        network.train()
        x0, text, noise, t = _inputs(model)
        loss = ((_predict(model, x0, text, noise, t) - flow_target(x0, noise)) ** 2).mean()
        loss.backward()
        for name, param in list(network.router.named_parameters()) + list(network.gate.named_parameters()):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        magnitudes = [a.magnitude.grad for a in network.adapters.values()]
        assert all(g is not None for g in magnitudes) and sum(float(g.abs().sum()) for g in magnitudes) > 0
    finally:
        network.remove()


def test_round_trip_and_exported_dora_expert_matches_the_hinted_mixture(tmp_path):
    model = _model()
    network = _trained(model)
    path = save_moe(tmp_path / "moe.safetensors", {"single": network}, model_kind="demo-t2v", step=5, stage1={})
    moe = load_moe(path)
    assert moe.spec.use_dora and moe.header["format_version"] == 2 and "single" in moe.header["dora_base"]
    prefix = "lora_unet_blocks_7_self_attn_q"
    assert moe.part("single")[f"{prefix}.dora_scale"].shape == (3, model.config.num_attention_heads *
                                                                 model.config.attention_head_dim, 1)
    reloaded = MoeNetwork.create(model, moe.spec)
    load_into(reloaded, moe)
    for name, adapter in network.adapters.items():
        torch.testing.assert_close(reloaded.adapters[name].magnitude, adapter.magnitude, rtol=1e-5, atol=1e-6)

    x0, text, noise, t = _inputs(model, batch=1)
    t = torch.tensor([0.4])
    with torch.no_grad():
        reloaded.gate.knots.zero_()  # τ = 1
    reloaded.eval().inject()
    reloaded.set_hint(torch.tensor([[0.0, 1.0, 0.0]]))
    with torch.no_grad():
        mixed = _predict(model, x0, text, noise, t)
    reloaded.remove()
    with torch.no_grad():
        base = _predict(model, x0, text, noise, t)

    exported = export_expert(load_moe(path), "blue", tmp_path / "blue.safetensors")[0]
    with safe_open(str(exported), framework="pt") as handle:
        keys = set(handle.keys())
        header = handle.metadata()
    assert f"{prefix}.dora_scale" in keys and f"{prefix}.lora_down.weight" in keys and f"{prefix}.alpha" in keys
    assert header["loraid_studio.use_dora"] == "true" and header["loraid_studio.dora_convention"] == "base_norm"
    lora = load_lora(exported)
    assert lora.flags["use_dora"] and lora.flags["dora_convention"] == "base_norm" and not lora.notes
    assert lora.parts("blocks.7.self_attn.q")["dora_scale"].shape[1] == 1  # [out, 1], ComfyUI's output axis
    plain = AdapterNetwork.from_weights(model, lora.tensors, lora.flags).inject()
    with torch.no_grad():
        alone = _predict(model, x0, text, noise, t)
    plain.remove()
    torch.testing.assert_close(alone, mixed, rtol=1e-4, atol=1e-5)
    assert (alone - base).abs().max() > 1e-3  # the expert does something
    # the demo's measure applies the expert the same way, straight from the MoE file
    direct = AdapterNetwork.from_weights(model, export_tensors(moe, "blue", "single"),
                                         export_flags(moe, "single")).inject()
    with torch.no_grad():
        torch.testing.assert_close(_predict(model, x0, text, noise, t), mixed, rtol=1e-4, atol=1e-5)
    direct.remove()

    # ComfyUI's rule on the exported tensors: W' = dora_scale ∘ (W + alpha/r · up @ down) / ||W||_row
    parts = lora.parts("blocks.7.ffn.0")
    blue = network.adapters["lora_unet_blocks_7_ffn_0"]
    weight = blue.target.weight.float()
    adapted = weight + float(parts["alpha"]) / parts["lora_down.weight"].shape[0] * (
        parts["lora_up.weight"] @ parts["lora_down.weight"])
    comfy = parts["dora_scale"] * adapted / weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(weight + blue.expert_delta(1), comfy, rtol=1e-4, atol=1e-5)


def test_inspect_names_dora_experts(tmp_path, capsys):
    model = _model()
    path = save_moe(tmp_path / "moe.safetensors", {"single": _trained(model)}, model_kind="demo-t2v", step=1,
                    stage1={})
    assert backend_main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dora"] is True
    assert backend_main(["inspect", str(path)]) == 0
    assert "3 DoRA experts (red, blue, green)" in capsys.readouterr().out

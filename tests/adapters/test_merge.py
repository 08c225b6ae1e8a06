"""Merging: musubi-tuner's own outputs reproduced, and the pure per-module merge vs independent formulas."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from backend.adapters.merge import delta_for_module, merged_weight_for_module
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.errors import UserError
from backend.models.names import lora_key_prefix, wan_to_diffusers


def test_musubi_golden_outputs(musubi_fixture, musubi_dir):
    model, golden, run = musubi_fixture
    base = run()
    assert (base - golden["out_base"]).abs().max() < 5e-3  # the loader agrees before any LoRA
    for file, multiplier, key in (("lora_full", 1.0, "out_lora_full_x1.0"),
                                  ("lora_blocks_0_1", 0.7, "out_lora_blocks_0_1_x0.7")):
        expected = golden[key]
        assert (expected - golden["out_base"]).abs().max() > 0.1  # a scale mistake would show
        network = AdapterNetwork.from_weights(model, load_file(musubi_dir / f"{file}.safetensors"),
                                              {"use_rslora": False}, multiplier=multiplier).inject()
        assert len(network.adapters) == (40 if file == "lora_full" else 20)
        torch.testing.assert_close(run(), expected, atol=5e-3, rtol=0)
        network.merge_into_model()
        torch.testing.assert_close(run(), expected, atol=5e-3, rtol=0)
        network.remove()
        assert torch.equal(run(), base)


def _module(shape=(12, 10), seed=0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(*shape, generator=generator),
            "down": torch.randn(3, *shape[1:], generator=generator),
            "up": torch.randn(shape[0], 3, generator=generator)}


def test_lora_merge_is_alpha_over_rank():
    t = _module()
    parts = {"lora_down.weight": t["down"], "lora_up.weight": t["up"], "alpha": torch.tensor(1.5)}
    expected = t["weight"].double() + 0.6 * (1.5 / 3) * (t["up"].double() @ t["down"].double())
    merged = merged_weight_for_module(parts, t["weight"], 0.6)
    torch.testing.assert_close(merged.double(), expected, atol=1e-5, rtol=0)
    no_alpha = {k: v for k, v in parts.items() if k != "alpha"}  # kohya: no alpha means scale 1
    torch.testing.assert_close(delta_for_module(no_alpha, t["weight"], 1.0), t["up"] @ t["down"])


def test_dora_merge_uses_comfyui_strength_and_zero_is_exact():
    t = _module()
    magnitude = torch.rand(12, 1) + 0.5
    parts = {"lora_down.weight": t["down"], "lora_up.weight": t["up"], "alpha": torch.tensor(3.0),
             "dora_scale": magnitude}
    adapted = t["weight"] + t["up"] @ t["down"]
    full = magnitude * adapted / adapted.norm(dim=1, keepdim=True)
    for strength in (1.0, 0.4, -0.5):
        torch.testing.assert_close(merged_weight_for_module(parts, t["weight"], strength),
                                   t["weight"] + strength * (full - t["weight"]), atol=1e-5, rtol=0)
    assert torch.equal(merged_weight_for_module(parts, t["weight"], 0.0), t["weight"])


def test_loha_and_lokr_merge_formulas():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(12, 10, generator=generator)
    loha = {name: torch.randn(*shape, generator=generator) for name, shape in
            (("hada_w1_a", (12, 2)), ("hada_w1_b", (2, 10)), ("hada_w2_a", (12, 2)), ("hada_w2_b", (2, 10)))}
    loha["alpha"] = torch.tensor(1.0)
    expected = 0.5 * (loha["hada_w1_a"] @ loha["hada_w1_b"]) * (loha["hada_w2_a"] @ loha["hada_w2_b"])
    torch.testing.assert_close(delta_for_module(loha, weight, 1.0), expected)

    w1, w2a, w2b = torch.randn(3, 2, generator=generator), torch.randn(4, 2, generator=generator), \
        torch.randn(2, 5, generator=generator)
    lokr = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": torch.tensor(6.0)}  # alpha ≠ rank
    expected = torch.kron(w1, w2a @ w2b) * (6.0 / 2)
    torch.testing.assert_close(delta_for_module(lokr, weight, 1.0), expected)
    full = {"lokr_w1": w1, "lokr_w2": w2a @ w2b, "alpha": torch.tensor(6.0)}  # both halves full: alpha ignored
    torch.testing.assert_close(delta_for_module(full, weight, 0.5), 0.5 * torch.kron(w1, w2a @ w2b))


def test_merge_refuses_incomplete_or_foreign_tensors():
    t = _module()
    parts = {"lora_down.weight": t["down"], "lora_up.weight": t["up"], "alpha": torch.tensor(3.0)}
    with pytest.raises(UserError, match="marked use_dora but `blocks.0.ffn.0` has no dora_scale"):
        delta_for_module(parts, t["weight"], 1.0, {"use_dora": "true"}, module_name="blocks.0.ffn.0")
    conv_parts = {"lora_down.weight": torch.randn(3, 4, 1, 2, 2), "lora_up.weight": torch.randn(6, 3, 1, 1, 1)}
    conv_weight = torch.randn(6, 4, 1, 2, 2)  # DoRA networks fall back to LoRA on convolutions
    torch.testing.assert_close(delta_for_module(conv_parts, conv_weight, 1.0, {"use_dora": True}),
                               (conv_parts["lora_up.weight"].reshape(6, 3) @ conv_parts["lora_down.weight"].reshape(
                                   3, -1)).reshape(6, 4, 1, 2, 2))
    with pytest.raises(UserError, match="another model"):
        delta_for_module(parts, torch.zeros(12, 11), 1.0)
    with pytest.raises(UserError, match="lora_up.weight"):
        delta_for_module({"lora_down.weight": t["down"]}, t["weight"], 1.0)
    with pytest.raises(UserError, match="lokr_w2"):
        delta_for_module({"lokr_w1": t["weight"]}, t["weight"], 1.0)


def test_bf16_weights_merge_once_rounded():
    t = _module()
    parts = {"lora_down.weight": t["down"], "lora_up.weight": t["up"], "alpha": torch.tensor(3.0)}
    base = t["weight"].bfloat16()
    merged = merged_weight_for_module(parts, base, 0.5)
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, (base.float() + 0.5 * (t["up"] @ t["down"])).bfloat16())


@pytest.mark.parametrize("args", [["use_dora=True"], ["algo=locon", "conv_dim=2"], ["algo=loha"],
                                  ["algo=lokr", "factor=4"], ["algo=lokr"], ["algo=lokr", "conv_dim=2"],
                                  ["algo=loha", "conv_dim=2", "use_dora=True"]])
def test_streaming_merge_equals_network_merge(tiny_wan, randomized, args):
    """The pure per-module merge (for the streaming DiT merger) writes exactly what the network merge writes."""
    network = AdapterNetwork.create(tiny_wan, NetworkConfig.from_network_args(2, 3.0, args))
    randomized(network)
    state, flags = network.state_dict_for_save(), network.flags()
    base = {key: value.clone() for key, value in tiny_wan.state_dict().items()}
    network.merge_into_model(0.7)
    for name in network.modules_by_name():
        prefix = lora_key_prefix(name)
        parts = {key[len(prefix) + 1:]: value for key, value in state.items() if key.startswith(prefix + ".")}
        weight_key = wan_to_diffusers(name) + ".weight"
        streamed = merged_weight_for_module(parts, base[weight_key], 0.7, flags, module_name=name)
        if "use_dora=True" in args:  # the file holds ComfyUI's scale, the network m: equal to float rounding
            torch.testing.assert_close(streamed, tiny_wan.state_dict()[weight_key], rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(streamed, tiny_wan.state_dict()[weight_key]), name
    network.unmerge()
    assert all(torch.equal(base[key], value) for key, value in tiny_wan.state_dict().items())

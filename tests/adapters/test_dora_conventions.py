"""DoRA files: ComfyUI applies the files this app writes exactly; every convention other tools write is read right.

`comfy_apply` below is ComfyUI's documented DoRA rule (DESIGN.md §4), written here from the formula alone:
ΔW = (alpha / r)·up @ down, W_c = W + ΔW; a `dora_scale` with one value per output row is divided by the row norms
of the *base* W, one with a value per input column by the column norms of W_c; norm += eps of the weight's dtype;
W' = W_c · scale / norm; at strength s the weight becomes W + s·(W' − W).
"""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from backend.adapters.formats import load_lora, save_lora
from backend.adapters.metadata import OURS, build_metadata
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.models.names import lora_key_prefix, wan_to_diffusers


def comfy_apply(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, alpha: float, scale: torch.Tensor,
                strength: float) -> torch.Tensor:
    weight = weight.double()
    calc = weight + (up.double() @ down.double()) * (alpha / down.shape[0])
    if scale.shape[0] == weight.shape[0]:
        norm = weight.norm(dim=1, keepdim=True)
    else:
        norm = calc.norm(dim=0, keepdim=True)
    norm = norm + torch.finfo(torch.float32).eps
    calc = calc * (scale.double() / norm)
    return (weight + strength * (calc - weight)).float()


def _file_weights(path, base_weights, strength):
    """{Wan name: ComfyUI's merged weight} from the file's raw tensors (read without our loader)."""
    tensors = load_file(str(path))
    out = {}
    for name, weight in base_weights.items():
        prefix = lora_key_prefix(name)
        out[name] = comfy_apply(weight, tensors[f"{prefix}.lora_down.weight"], tensors[f"{prefix}.lora_up.weight"],
                                float(tensors[f"{prefix}.alpha"]), tensors[f"{prefix}.dora_scale"], strength)
    return out


def _trained_dora(model, randomized, path):
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(4, 2.0, ["use_dora=True"]))
    randomized(network, std=0.2)
    save_lora(path, network.state_dict_for_save(),
              build_metadata("dora", 4, 2.0, ["use_dora=True"], network.flags(), "demo-t2v"))
    return network


def _weights_of(model, names):
    state = model.state_dict()
    return {name: state[wan_to_diffusers(name) + ".weight"].clone() for name in names}


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_comfyui_formula_on_our_dora_file_gives_our_merge(tiny_wan, randomized, tmp_path, strength):
    path = tmp_path / "dora.safetensors"
    network = _trained_dora(tiny_wan, randomized, path)
    names = list(network.modules_by_name())
    base = _weights_of(tiny_wan, names)
    comfy = _file_weights(path, base, strength)
    network.merge_into_model(strength)
    ours = _weights_of(tiny_wan, names)
    worst = max(float((comfy[name] - ours[name]).abs().max()) for name in names)
    assert worst < 2e-6, f"ComfyUI's reading differs from our merge by {worst:.3g}"
    # The file does not simply hold the trained magnitudes m: ComfyUI's rule on m would be visibly off.
    network.unmerge()
    adapter = network.modules_by_name()[names[0]]
    tensors = load_file(str(path))
    prefix = lora_key_prefix(names[0])
    naive = comfy_apply(base[names[0]], tensors[f"{prefix}.lora_down.weight"], tensors[f"{prefix}.lora_up.weight"],
                        2.0, adapter.magnitude.detach(), strength)
    assert float((naive - ours[names[0]]).abs().max()) > 1e-3


def test_the_header_records_the_convention_and_the_base(tiny_wan, randomized, tmp_path):
    path = tmp_path / "dora.safetensors"
    network = _trained_dora(tiny_wan, randomized, path)
    lora = load_lora(path)
    assert lora.metadata[OURS + "dora_convention"] == "base_norm"
    assert lora.flags["dora_convention"] == "base_norm"
    modules = lora.flags["dora_base"]["modules"]
    weight = tiny_wan.blocks[0].attn1.to_q.weight.detach()
    assert modules["blocks.0.self_attn.q"]["mean"] == pytest.approx(float(weight.norm(dim=1).mean()), rel=1e-6)
    assert set(modules) == set(network.modules_by_name())


def test_the_base_check_tells_a_copy_from_another_base(tiny_wan, randomized, tmp_path):
    """A bf16 copy of the base is the same base; one layer whose row norms moved by about 2 % is another."""
    from backend.adapters.dora_base import file_base_warning

    path = tmp_path / "dora.safetensors"
    _trained_dora(tiny_wan, randomized, path)
    flags = load_lora(path).flags
    with torch.no_grad():
        for param in tiny_wan.parameters():
            param.copy_(param.bfloat16().float())
    assert file_base_warning(tiny_wan, flags, "dora.safetensors") is None
    with torch.no_grad():
        weight = tiny_wan.blocks[1].ffn.net[0].proj.weight
        weight *= 1 + 0.02 * torch.randn(weight.shape[0], 1, generator=torch.Generator().manual_seed(0))
    warning = file_base_warning(tiny_wan, flags, "dora.safetensors")
    assert "the row norms of 1 of 20 modules differ, e.g. `blocks.1.ffn.0`" in warning


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_loaded_file_runs_like_the_trained_network(tiny_wan, randomized, tmp_path, inputs, run, strength):
    path = tmp_path / "dora.safetensors"
    network = _trained_dora(tiny_wan, randomized, path)
    network.multiplier = strength
    network.inject()
    expected = run(tiny_wan, inputs)
    network.remove()
    lora = load_lora(path)
    loaded = AdapterNetwork.from_weights(tiny_wan, lora.tensors, lora.flags, multiplier=strength).inject()
    torch.testing.assert_close(run(tiny_wan, inputs), expected, rtol=0, atol=1e-5)
    loaded.remove()


def test_resuming_from_the_file_recovers_the_trained_magnitudes(tiny_wan, randomized, tmp_path):
    path = tmp_path / "dora.safetensors"
    network = _trained_dora(tiny_wan, randomized, path)
    lora = load_lora(path)
    resumed = AdapterNetwork.create(tiny_wan, NetworkConfig.from_network_args(4, 2.0, ["use_dora=True"]))
    resumed.load_weights(lora.tensors, lora.flags)
    for name, adapter in resumed.modules_by_name().items():
        assert adapter.dora_convention == "merged_norm"
        torch.testing.assert_close(adapter.magnitude, network.modules_by_name()[name].magnitude, rtol=1e-6, atol=0)


def test_another_base_warns_and_still_applies_comfyui_rule(tiny_wan, make_wan, randomized, tmp_path, caplog):
    path = tmp_path / "dora.safetensors"
    _trained_dora(tiny_wan, randomized, path)
    lora = load_lora(path)
    other = make_wan(seed=5)
    names = lora.modules
    base = _weights_of(other, names)
    expected = _file_weights(path, base, 1.0)
    with caplog.at_level(logging.WARNING, logger="backend.adapters"):
        resumed = AdapterNetwork.create(other, NetworkConfig.from_network_args(4, 2.0, ["use_dora=True"]))
        resumed.load_weights(lora.tensors, lora.flags)
    assert "computed on another base model" in caplog.text and "--to lora" in caplog.text
    from backend.adapters.dora_base import file_base_warning

    assert file_base_warning(tiny_wan, lora.flags, "dora.safetensors") is None
    assert "of 20 of 20 modules differ" in file_base_warning(other, lora.flags, "dora.safetensors")
    loaded = AdapterNetwork.from_weights(other, lora.tensors, lora.flags)
    loaded.merge_into_model(1.0)
    merged = _weights_of(other, names)
    assert max(float((merged[n] - expected[n]).abs().max()) for n in names) < 2e-6


def _magnitude_file(path, lora_builder, shapes, scale_shape, metadata=None, seed=0):
    tensors = lora_builder(shapes, rank=4, alpha=2.0, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    for name, (fan_in, fan_out) in shapes.items():
        shape = scale_shape(fan_in, fan_out)
        tensors[f"{lora_key_prefix(name)}.dora_scale"] = torch.rand(*shape, generator=generator) + 0.5
    save_lora(path, tensors, metadata or {})
    return tensors


def test_lycoris_input_axis_scale_is_applied_per_column(tiny_wan, lora_builder, tmp_path, inputs, run):
    """LyCORIS' default DoRA stores one magnitude per input column ([1, in]); ComfyUI and LyCORIS divide it by
    the column norms of W + ΔW. Square layers (q, k, v, o) must not be mistaken for output-axis scales."""
    shapes = {"blocks.0.self_attn.q": (32, 32), "blocks.1.ffn.0": (32, 64), "blocks.1.ffn.2": (64, 32)}
    path = tmp_path / "lycoris.safetensors"
    _magnitude_file(path, lora_builder, shapes, lambda fan_in, fan_out: (1, fan_in))
    lora = load_lora(path)
    assert lora.tensors["lora_unet_blocks_0_self_attn_q.dora_scale"].shape == (1, 32)
    base = _weights_of(tiny_wan, shapes)
    expected = _file_weights(path, base, 0.7)
    network = AdapterNetwork.from_weights(tiny_wan, lora.tensors, lora.flags, multiplier=0.7).inject()
    hooked = run(tiny_wan, inputs)
    network.merge_into_model()
    merged = _weights_of(tiny_wan, shapes)
    assert max(float((merged[n] - expected[n]).abs().max()) for n in shapes) < 2e-6
    torch.testing.assert_close(run(tiny_wan, inputs), hooked, rtol=0, atol=1e-5)


def test_a_trainer_convention_file_is_read_over_the_adapted_norm(tiny_wan, lora_builder, tmp_path):
    """Output-axis scales from other trainers (LyCORIS wd_on_out, PEFT) and our files from before ComfyUI's
    convention are magnitudes over ||W + ΔW||; inspect says ComfyUI reads them differently."""
    shapes = {"blocks.0.ffn.0": (32, 64)}
    path = tmp_path / "old.safetensors"
    tensors = _magnitude_file(path, lora_builder, shapes, lambda fan_in, fan_out: (fan_out, 1),
                              metadata={OURS + "version": "1", OURS + "use_dora": "true"})
    lora = load_lora(path)
    assert lora.flags["dora_convention"] == "merged_norm"
    assert any("ComfyUI divides them by ||W||" in note for note in lora.notes)
    prefix = lora_key_prefix("blocks.0.ffn.0")
    weight = _weights_of(tiny_wan, shapes)["blocks.0.ffn.0"]
    adapted = weight + tensors[f"{prefix}.lora_up.weight"] @ tensors[f"{prefix}.lora_down.weight"] * 0.5
    expected = tensors[f"{prefix}.dora_scale"] * adapted / adapted.norm(dim=1, keepdim=True)
    AdapterNetwork.from_weights(tiny_wan, lora.tensors, lora.flags).merge_into_model(1.0)
    torch.testing.assert_close(_weights_of(tiny_wan, shapes)["blocks.0.ffn.0"], expected, rtol=0, atol=1e-6)


def test_convert_with_base_rewrites_trainer_scales_in_comfyui_convention(tiny_wan, lora_builder, tmp_path, capsys):
    from safetensors.torch import save_file

    from backend.__main__ import main

    shapes = {"blocks.0.ffn.0": (32, 64), "blocks.1.self_attn.k": (32, 32)}
    path, out, dit = tmp_path / "old.safetensors", tmp_path / "comfy.safetensors", tmp_path / "dit.safetensors"
    _magnitude_file(path, lora_builder, shapes, lambda fan_in, fan_out: (fan_out, 1),
                    metadata={OURS + "version": "1", OURS + "use_dora": "true"})
    save_file({key: value.contiguous() for key, value in tiny_wan.state_dict().items()}, str(dit))
    old = load_lora(path)
    AdapterNetwork.from_weights(tiny_wan, old.tensors, old.flags).merge_into_model(1.0)
    trained = _weights_of(tiny_wan, shapes)
    base = {name: load_file(str(dit))[wan_to_diffusers(name) + ".weight"] for name in shapes}
    assert main(["convert", str(path), str(out), "--to", "musubi", "--base", str(dit)]) == 0
    assert load_lora(out).flags["dora_convention"] == "base_norm"
    comfy = _file_weights(out, base, 1.0)
    assert max(float((comfy[n] - trained[n]).abs().max()) for n in shapes) < 2e-6


def test_diffusers_export_of_a_comfyui_convention_file_needs_the_base(tiny_wan, randomized, tmp_path, capsys):
    """PEFT reads `lora_magnitude_vector` as m over ||W + ΔW||: the export turns ComfyUI's scale back into m."""
    from safetensors.torch import save_file

    from backend.__main__ import main
    from backend.models.names import wan_to_diffusers

    path, dit = tmp_path / "dora.safetensors", tmp_path / "dit.safetensors"
    network = _trained_dora(tiny_wan, randomized, path)
    save_file({key: value.contiguous() for key, value in tiny_wan.state_dict().items()}, str(dit))
    assert main(["convert", str(path), str(tmp_path / "d.safetensors"), "--to", "diffusers"]) == 2
    assert "pass the DiT it was trained on with --base" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "d.safetensors"), "--to", "diffusers", "--base", str(dit)]) == 0
    exported = load_file(str(tmp_path / "d.safetensors"))
    for name, adapter in network.modules_by_name().items():
        magnitude = exported[f"transformer.{wan_to_diffusers(name)}.lora_magnitude_vector"]
        torch.testing.assert_close(magnitude, adapter.magnitude.detach().reshape(-1), rtol=1e-5, atol=0)

"""Scaled fp8 storage: quantisation error bound, forward = Linear on the dequantised weight, adapters still hooked,
ComfyUI scaled-fp8 files loaded straight into the storage, and the loss difference against bf16 (quality guard)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from backend.models import demo_parts
from backend.models.fp8_quality import fixed_inputs, storage_loss_difference
from backend.models.fp8_scaled import (
    FP8,
    ScaledFp8Linear,
    block_linears,
    dequantize_weight,
    effective_weight,
    quantize_weight,
    store_scaled_fp8,
)
from backend.models.loading import load_transformer, original_state_dict
from backend.models.registry import get_model_kind

E4M3_HALF_ULP = 2.0 ** -4  # 3 mantissa bits: round-to-nearest is within 1/16 of the value (normal range)
E4M3_SUBNORMAL_HALF_STEP = 2.0 ** -10  # smallest e4m3fn step is 2^-9; half of it, times the row scale


def test_quantise_dequantise_error_is_within_half_an_fp8_step_per_row():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(64, 96, generator=generator) * torch.logspace(-6, 1, 64).unsqueeze(1)  # 7 decades of rows
    rows[3] = 0.0
    q, scale = quantize_weight(rows)
    assert q.dtype == FP8 and scale.shape == (64, 1) and scale.dtype == torch.float32
    back = dequantize_weight(q, scale, torch.float32)
    bound = torch.maximum(rows.abs() * E4M3_HALF_ULP, scale * E4M3_SUBNORMAL_HALF_STEP)
    assert bool(((back - rows).abs() <= bound * (1 + 1e-6)).all())
    assert torch.equal(back[3], torch.zeros(96))
    # every row's largest magnitude lands on the top of the fp8 range, exactly
    assert torch.allclose(back.abs().amax(dim=1)[rows.abs().amax(dim=1) > 0],
                          rows.abs().amax(dim=1)[rows.abs().amax(dim=1) > 0], rtol=1e-6)
    # a plain cast loses the small rows that the per-row scale keeps
    plain = rows.to(FP8).to(torch.float32)
    small = slice(0, 16)  # rows of magnitude 1e-6 .. 1e-4
    assert (plain[small] - rows[small]).norm() / rows[small].norm() > 0.5
    assert (back[small] - rows[small]).norm() / rows[small].norm() < 0.05


def _tiny_model(seed: int = 3, dtype=torch.float32):
    return demo_parts.build_transformer("demo-t2v", seed, part=10).to(dtype).eval()


def test_scaled_layers_compute_the_linear_of_the_dequantised_weight_and_keep_adapter_hooks():
    from backend.adapters.network import AdapterNetwork
    from backend.adapters.network_config import NetworkConfig

    model = _tiny_model()
    reference = copy.deepcopy(model)
    saved = store_scaled_fp8(model)
    layers = block_linears(model)
    assert layers and all(isinstance(layer, ScaledFp8Linear) for layer in layers.values())
    assert saved == sum(layer.weight.numel() * 3 - layer.scale_weight.numel() * 4 for layer in layers.values())
    layer = layers["blocks.0.attn1.to_q"]
    x = torch.randn(2, 5, layer.in_features, generator=torch.Generator().manual_seed(1))
    expected = F.linear(x, layer.weight.to(torch.float32) * layer.scale_weight, layer.bias)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    # the input gradient is the plain Linear's on the dequantised weight; autograd keeps only the fp8 weight
    x_grad = x.clone().requires_grad_(True)
    reference_layer = torch.nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        reference_layer.weight.copy_(effective_weight(layer))
        reference_layer.bias.copy_(layer.bias)
    x_ref = x.clone().requires_grad_(True)
    layer(x_grad).square().sum().backward()
    reference_layer(x_ref).square().sum().backward()
    assert torch.allclose(x_grad.grad, x_ref.grad, atol=1e-5)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x.clone().requires_grad_(True))
    assert saved and all(t.dtype == FP8 or t.numel() <= layer.out_features for t in saved)
    # adapters hook the same layer objects: a non-zero LoRA changes the output by the same delta as on fp32
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(4, 4.0, []), "n")
    ref_network = AdapterNetwork.create(reference, NetworkConfig.from_network_args(4, 4.0, []), "n")
    for net in (network, ref_network):
        torch.manual_seed(5)
        with torch.no_grad():
            for param in net.trainable_params():
                param.normal_(std=0.1)
        net.inject()
    ref_layer = block_linears(reference)["blocks.0.attn1.to_q"]
    delta = layer(x) - F.linear(x, effective_weight(layer), layer.bias)
    ref_delta = ref_layer(x) - F.linear(x, ref_layer.weight, ref_layer.bias)
    assert delta.abs().max() > 1e-3
    assert torch.allclose(delta, ref_delta, atol=1e-5)


def _dequantised_copy(model):
    """The same model with every scaled fp8 layer replaced by a float32 Linear holding q · scale."""
    plain = copy.deepcopy(model)
    for name, layer in block_linears(plain).items():
        weight = effective_weight(layer).detach().clone()
        del layer.scale_weight
        layer.__class__ = torch.nn.Linear
        layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    return plain


@pytest.mark.parametrize("algo", ["lora", "loha"])
def test_dora_on_scaled_fp8_equals_dora_on_the_dequantised_weights(algo):
    from backend.adapters.network import AdapterNetwork
    from backend.adapters.network_config import NetworkConfig

    model = _tiny_model()
    store_scaled_fp8(model)
    plain = _dequantised_copy(model)
    args = ["use_dora=True"] + ([f"algo={algo}"] if algo != "lora" else [])
    outputs, magnitudes, fingerprints = [], [], []
    for m in (model, plain):
        torch.manual_seed(0)
        network = AdapterNetwork.create(m, NetworkConfig.from_network_args(4, 4.0, args), "n")
        with torch.no_grad():
            for param in network.trainable_params():
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())) * 0.05)
        network.inject()
        adapter = network.adapters["lora_unet_blocks_0_self_attn_q"]
        magnitudes.append(adapter.magnitude.detach().clone())
        fingerprints.append(network.flags()["dora_base"])
        x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
        text = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(3))
        outputs.append(m(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                         return_dict=False)[0])
    assert torch.allclose(magnitudes[0], magnitudes[1], rtol=1e-6)
    assert fingerprints[0] == fingerprints[1]  # the saved file names the same base either way
    # the detached norm takes W Aᵀ in bf16 (as on a bf16 base); everything else is the same float32 math
    assert (outputs[0] - outputs[1]).abs().max() < 1e-3


def _comfy_scaled_file(model, path, per_tensor: set[str]):
    """A ComfyUI "scaled fp8" checkpoint: block Linear weights fp8 with `scale_weight`, the rest in bf16."""
    state = original_state_dict(model)
    linear_names = {name.replace(".weight", "") for name in state if name.startswith("blocks.")
                    and state[name].dim() == 2 and name.endswith(".weight")}
    out, expected = {}, {}
    for name, tensor in state.items():
        module = name[: -len(".weight")]
        if module in linear_names:
            rows = tensor.float().abs().amax() if module in per_tensor else tensor.float().abs().amax(1, keepdim=True)
            scale = rows / 448.0
            fp8 = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[f"model.diffusion_model.{name}"] = fp8
            out[f"model.diffusion_model.{module}.scale_weight"] = scale.reshape(()) if module in per_tensor \
                else scale.flatten()
            out[f"model.diffusion_model.{module}.scale_input"] = torch.ones(())
            expected[name] = fp8.to(torch.float32) * scale
        else:
            out[f"model.diffusion_model.{name}"] = tensor.to(torch.bfloat16)
            expected[name] = tensor.to(torch.bfloat16).to(torch.float32)
    out["model.diffusion_model.scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    save_file(out, str(path))
    return out, expected


def test_comfyui_scaled_fp8_file_loads_straight_into_scaled_storage(tmp_path, monkeypatch):
    from diffusers import WanTransformer3DModel

    path = tmp_path / "wan_fp8_scaled.safetensors"
    per_tensor = {"blocks.1.ffn.0", "blocks.2.self_attn.o"}
    stored, expected = _comfy_scaled_file(_tiny_model(), path, per_tensor)
    dequantised = load_transformer(path, "demo-t2v")  # the existing path: fp32, dequantised on load

    def no_full_precision_copy(*args, **kwargs):
        raise AssertionError("the scaled fp8 file went through a full-precision load")

    monkeypatch.setattr(WanTransformer3DModel, "from_single_file", no_full_precision_copy)
    model = load_transformer(path, "demo-t2v", dtype=torch.bfloat16, storage="fp8_scaled")
    layers = block_linears(model)
    assert len(layers) == 8 * 10 and all(isinstance(layer, ScaledFp8Linear) for layer in layers.values())
    state = original_state_dict(model)
    for name, tensor in state.items():
        if name.endswith(".scale_weight"):
            continue
        if tensor.dtype == FP8:
            module = name[: -len(".weight")]
            # the file's fp8 bits are kept, and q · scale is the independent dequantisation above
            assert torch.equal(tensor.view(torch.uint8), stored[f"model.diffusion_model.{name}"].view(torch.uint8))
            back = tensor.to(torch.float32) * state[f"{module}.scale_weight"]
            assert torch.equal(back, expected[name]), name
            assert state[f"{module}.scale_weight"].shape == (tensor.shape[0], 1)
        else:
            assert torch.equal(tensor.float(), expected[name]), name
    kept = {n: p.dtype for n, p in model.named_parameters() if not n.endswith("weight") or "blocks" not in n}
    assert kept["blocks.0.scale_shift_table"] == torch.float32  # diffusers' keep-in-fp32 modules stay fp32
    assert kept["blocks.0.attn1.to_q.bias"] == torch.bfloat16
    inputs = fixed_inputs(model.config, frames=5, height=32, width=32, text_tokens=8)
    for layer in dequantised.modules():  # same weights, so the same forward up to bf16 compute
        layer.to(torch.bfloat16)
    from backend.models.fp8_quality import flow_loss

    assert flow_loss(model, inputs) == pytest.approx(flow_loss(dequantised, inputs), rel=2e-2)


def test_quality_guard_scaled_fp8_loss_is_within_half_a_percent_of_bf16_on_the_demo_model():
    """The stated numbers (demo-t2v, seed 3, 5x32x32, t=0.5): see the printed line; the bound is what we promise."""
    config = get_model_kind("demo-t2v").config()
    inputs = fixed_inputs(config, frames=5, height=32, width=32, text_tokens=8, seed=0)
    numbers = storage_loss_difference(lambda: _tiny_model(dtype=torch.bfloat16), inputs)
    print(f"\nfp8 quality guard (demo-t2v): {numbers}")
    assert numbers["fp8_scaled_relative"] < 5e-3
    assert numbers["fp8_scaled_relative"] <= numbers["fp8_relative"]

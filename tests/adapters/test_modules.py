"""Adapter modules: injected output == merged weights, exact unmerge, multiplier 0, and the math vs independent code."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from backend.adapters import deltas
from backend.adapters.loha import LoHaAdapter
from backend.adapters.lokr import LoKrAdapter
from backend.adapters.lora import LoRAAdapter
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig

ALGORITHMS = {
    "lora": ["algo=lora"],
    "dora": ["algo=dora"],
    "locon": ["algo=locon", "conv_dim=3", "conv_alpha=2"],
    "loha": ["algo=loha"],
    "lokr": ["algo=lokr"],
    "lokr_factorized": ["algo=lokr", "factor=4"],
    "rslora_dora_loha": ["algo=loha", "use_dora=True", "use_rslora=True"],
    "loha_conv": ["algo=loha", "conv_dim=2"],
    "lokr_conv_full": ["algo=lokr", "conv_dim=4"],
    "lokr_conv_factorized": ["algo=lokr", "conv_dim=2", "factor=2"],
}


def _network(model, args, rank=4, alpha=3.0):
    return AdapterNetwork.create(model, NetworkConfig.from_network_args(rank, alpha, args))


def _weights(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def _same_weights(model, saved) -> bool:
    return all(torch.equal(saved[key], value) for key, value in model.state_dict().items())


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_injected_equals_merged_and_unmerge_is_exact(algo, tiny_wan, inputs, run, randomized):
    base = run(tiny_wan, inputs)
    saved = _weights(tiny_wan)
    network = _network(tiny_wan, ALGORITHMS[algo]).inject()
    randomized(network)
    network.multiplier = 0.8
    injected = run(tiny_wan, inputs)
    assert (injected - base).abs().max() > 1e-2  # the adapter really changes the output
    network.merge_into_model()
    assert not _same_weights(tiny_wan, saved)
    merged = run(tiny_wan, inputs)
    torch.testing.assert_close(merged, injected, atol=1e-5, rtol=0)
    network.unmerge()
    assert _same_weights(tiny_wan, saved)
    torch.testing.assert_close(run(tiny_wan, inputs), injected, atol=1e-5, rtol=0)
    network.remove()
    assert torch.equal(run(tiny_wan, inputs), base) and _same_weights(tiny_wan, saved)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_multiplier_zero_and_disabled_are_the_base_model_bit_exactly(algo, tiny_wan, inputs, run, randomized):
    base = run(tiny_wan, inputs)
    saved = _weights(tiny_wan)
    network = _network(tiny_wan, ALGORITHMS[algo]).inject()
    randomized(network)
    network.multiplier = 0.0
    assert torch.equal(run(tiny_wan, inputs), base)
    network.merge_into_model()
    assert _same_weights(tiny_wan, saved) and torch.equal(run(tiny_wan, inputs), base)
    network.unmerge()
    network.multiplier = 1.0
    network.enabled = False
    assert torch.equal(run(tiny_wan, inputs), base)
    for adapter in network.adapters.values():
        assert torch.equal(adapter.merged_weight(0.0), adapter.target.weight)


def test_locon_adapts_the_patch_embedding_conv3d(tiny_wan, inputs, run, randomized):
    network = _network(tiny_wan, ALGORITHMS["locon"])
    adapter = network.modules_by_name()["patch_embedding"]
    assert adapter.is_conv and adapter.lora_down.shape == (3, 4, 1, 2, 2) and adapter.lora_up.shape == (32, 3, 1, 1, 1)
    assert adapter.scale == pytest.approx(2 / 3)
    randomized(network)
    x = inputs["hidden_states"]
    conv = tiny_wan.patch_embedding
    expected = F.conv3d(x, conv.weight + adapter.raw_delta(), conv.bias, conv.stride)
    network.inject()
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=0)


def _linear(out_features=12, in_features=10, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    return layer


def test_lora_init_is_kaiming_down_and_zero_up():
    adapter = LoRAAdapter("blocks.0.self_attn.q", _linear(in_features=300), rank=8, scale=0.5)
    assert torch.count_nonzero(adapter.lora_up) == 0
    bound = 1 / math.sqrt(300)  # kaiming_uniform(a=√5) == U(-1/√fan_in, 1/√fan_in)
    assert adapter.lora_down.abs().max() <= bound and adapter.lora_down.abs().max() > 0.8 * bound


def test_dora_norm_without_materialising_ba_equals_the_direct_norm():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 40, generator=generator, dtype=torch.float64)
    down = torch.randn(6, 40, generator=generator, dtype=torch.float64)
    up = torch.randn(48, 6, generator=generator, dtype=torch.float64)
    direct = (weight + 0.7 * up @ down).norm(dim=1)
    torch.testing.assert_close(deltas.lora_row_norm(weight, down, up, 0.7), direct, rtol=1e-12, atol=1e-12)


def test_dora_forward_is_the_normalised_weight_with_peft_bias():
    layer = _linear()
    adapter = LoRAAdapter("blocks.0.ffn.0", layer, rank=3, scale=0.5, use_dora=True)
    torch.testing.assert_close(adapter.magnitude.reshape(-1), layer.weight.detach().norm(dim=1))
    with torch.no_grad():
        adapter.lora_up.normal_()
        adapter.magnitude.mul_(torch.linspace(0.5, 1.5, 12).reshape(-1, 1))
    x = torch.randn(5, 10)
    adapted = layer.weight.detach() + 0.5 * adapter.lora_up @ adapter.lora_down.detach()
    dora_weight = adapter.magnitude.detach() * adapted / adapted.norm(dim=1, keepdim=True)
    base_out = layer(x)
    for multiplier in (1.0, 0.3):
        adapter.multiplier = multiplier
        expected = F.linear(x, layer.weight + multiplier * (dora_weight - layer.weight), layer.bias)
        torch.testing.assert_close(base_out + adapter(x, base_out), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(adapter.merged_weight(), layer.weight + multiplier * (dora_weight - layer.weight))


def test_dora_gradients_match_a_detached_norm_reference():
    layer = _linear().requires_grad_(False)
    adapter = LoRAAdapter("blocks.0.ffn.0", layer, rank=3, scale=0.7, use_dora=True)
    with torch.no_grad():
        adapter.lora_up.normal_()
    x = torch.randn(4, 10)
    (layer(x) + adapter(x, layer(x))).pow(2).sum().backward()
    down, up, magnitude = (p.detach().clone().requires_grad_() for p in
                           (adapter.lora_down, adapter.lora_up, adapter.magnitude))
    adapted = layer.weight + 0.7 * up @ down
    reference = F.linear(x, magnitude * adapted / adapted.norm(dim=1, keepdim=True).detach(), layer.bias)
    reference.pow(2).sum().backward()
    for ours, theirs in ((adapter.lora_down, down), (adapter.lora_up, up), (adapter.magnitude, magnitude)):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-4, rtol=1e-4)
    assert magnitude.grad.abs().sum() > 0


def test_loha_and_lokr_deltas_match_lycoris():
    from lycoris.functional.general import factorization
    from lycoris.functional.loha import diff_weight as loha_reference
    from lycoris.functional.lokr import make_kron

    generator = torch.Generator().manual_seed(0)
    w1a, w2a = torch.randn(12, 3, generator=generator), torch.randn(12, 3, generator=generator)
    w1b, w2b = torch.randn(3, 10, generator=generator), torch.randn(3, 10, generator=generator)
    ours = deltas.loha_delta(w1a, w1b, w2a, w2b, 0.25, (12, 10))
    theirs = loha_reference(w1b, w1a, w2b, w2a, None, None, gamma=torch.tensor(0.25))
    torch.testing.assert_close(ours, theirs.reshape(12, 10))
    w1, w2 = torch.randn(3, 2, generator=generator), torch.randn(4, 5, 2, 2, generator=generator)
    torch.testing.assert_close(deltas.lokr_delta(w1, w2, 0.5, (12, 10, 2, 2)), make_kron(w1, w2, 0.5))
    for dimension in (1, 7, 32, 64, 96, 127, 128, 360, 1536, 5120, 13824):
        for factor in (-1, 2, 4, 8, 16):
            assert deltas.factorization(dimension, factor) == factorization(dimension, factor), (dimension, factor)


def test_lokr_conv_flat_w2b_equals_the_kernel_layout():
    """LyCORIS stores a conv's factorized w2_b flat [r, d·k]; both layouts must give one ΔW."""
    generator = torch.Generator().manual_seed(0)
    w1 = torch.randn(2, 3, generator=generator)
    w2a, w2b = torch.randn(4, 2, generator=generator), torch.randn(2, 5, 1, 2, 2, generator=generator)
    kernel_layout = deltas.lokr_delta(w1, (w2a @ w2b.reshape(2, -1)).reshape(4, 5, 1, 2, 2), 1.0, (8, 15, 1, 2, 2))
    flat = deltas.lokr_delta(w1, deltas.lokr_half(None, w2a, w2b.reshape(2, -1)), 1.0, (8, 15, 1, 2, 2))
    torch.testing.assert_close(flat, kernel_layout)


def test_lokr_scale_convention_and_shapes():
    layer = _linear(out_features=64, in_features=32)
    factorized = LoKrAdapter.create("blocks.0.self_attn.q", layer, rank=2, alpha=3.0, factor=4)
    assert factorized.lokr_w1.shape == (4, 4) and factorized.lokr_w2_a.shape == (16, 2)
    assert factorized.lokr_w2_b.shape == (2, 8) and factorized.scale == 1.5
    full = LoKrAdapter.create("blocks.0.self_attn.q", layer, rank=8, alpha=3.0, factor=4)
    assert full.lokr_w2.shape == (16, 8) and full.scale == 1.0 and full.rank is None  # alpha ignored: both full
    rs = LoKrAdapter.create("blocks.0.self_attn.q", layer, rank=2, alpha=3.0, factor=4, use_rslora=True)
    assert rs.scale == pytest.approx(3.0 / math.sqrt(2))
    assert float(rs.canonical_tensors()["alpha"]) / 2 == pytest.approx(rs.scale)  # alpha/r gives the rsLoRA scale
    for adapter in (factorized, full):
        assert torch.count_nonzero(adapter.raw_delta()) == 0  # a fresh adapter is the identity


def test_loha_init_starts_at_zero_and_saves_its_scale_as_alpha_over_rank():
    adapter = LoHaAdapter("blocks.0.ffn.2", _linear(), rank=4, scale=deltas.alpha_scale(8.0, 4, use_rslora=True))
    assert torch.count_nonzero(adapter.raw_delta()) == 0
    assert adapter.scale == pytest.approx(4.0)
    assert float(adapter.canonical_tensors()["alpha"]) == pytest.approx(16.0)  # stored alpha = scale·r = 8·√4


@pytest.mark.parametrize("algo", ["lora", "loha"])
def test_rank_dropout_is_rescaled_to_keep_the_expectation(algo):
    torch.manual_seed(0)
    layer = _linear(out_features=6, in_features=5)
    adapter_class = LoRAAdapter if algo == "lora" else LoHaAdapter
    adapter = adapter_class("blocks.0.ffn.0", layer, rank=4, scale=1.0, rank_dropout=0.5)
    with torch.no_grad():
        for param in adapter.parameters():
            param.normal_()
    x = torch.randn(1, 5)
    adapter.eval()
    exact = adapter(x, layer(x))
    adapter.train()
    samples = torch.stack([adapter(x, layer(x)) for _ in range(4000)])
    assert samples.std(dim=0).max() > 0.1  # it really drops
    torch.testing.assert_close(samples.mean(dim=0), exact, atol=0.08 * exact.abs().max().item(), rtol=0)

"""The adapters' fast paths give the plain path's outputs and gradients on fixed inputs.

Fast paths: LoHa / LoKr forward through their factors instead of a product with the full ΔW; DoRA's row norm from
a cached ||W||² and an [r, out] product; adapter inputs kept in the autocast dtype (no float32 copy). Tolerances:
float32 paths agree to 1e-5 (relative to the output's size); a bf16-autocast run agrees with the float32 plain
path to 3e-2 of the output's size (bf16 has 8 mantissa bits; a few roundings add up).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from backend.adapters.loha import LoHaAdapter
from backend.adapters.lokr import LoKrAdapter
from backend.adapters.lora import LoRAAdapter
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig

FP32_TOLERANCE = 1e-5
BF16_TOLERANCE = 3e-2


def _layer(out_features=48, in_features=64, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features).requires_grad_(False)
    with torch.no_grad():
        layer.weight.normal_(0, 0.2)
        layer.bias.normal_(0, 0.2)
    return layer


def _adapter(algo, layer, use_dora=False, rank_dropout=0.0):
    common = {"use_dora": use_dora, "rank_dropout": rank_dropout}
    if algo == "loha":
        adapter = LoHaAdapter("blocks.0.ffn.0", layer, rank=4, scale=0.75, **common)
    elif algo == "lokr":
        adapter = LoKrAdapter.create("blocks.0.ffn.0", layer, rank=2, alpha=3.0, **common)
    elif algo == "lokr_full":
        adapter = LoKrAdapter.create("blocks.0.ffn.0", layer, rank=64, alpha=3.0, **common)
    else:
        adapter = LoRAAdapter("blocks.0.ffn.0", layer, rank=4, scale=0.75, **common)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in adapter.parameters():
            if param is not getattr(adapter, "magnitude", None):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        if use_dora:
            adapter.magnitude.mul_(torch.linspace(0.6, 1.4, layer.out_features).reshape(-1, 1))
    return adapter


def _plain(adapter):
    """The same adapter forced onto the plain path (ΔW built, layer op with it)."""
    adapter.uses_factored_forward = lambda: False
    return adapter


def _close(ours, reference, tolerance):
    scale = reference.abs().max().item()
    assert (ours.float() - reference.float()).abs().max().item() <= tolerance * scale, (ours, reference)


def _run(adapter, layer, x):
    out = layer(x)
    delta = adapter(x, out)
    return out + delta.to(out.dtype)


@pytest.mark.parametrize("algo", ["loha", "lokr", "lokr_full"])
@pytest.mark.parametrize("use_dora", [False, True])
def test_factored_forward_and_gradients_equal_the_full_delta_path(algo, use_dora):
    layer = _layer()
    fast = _adapter(algo, layer, use_dora)
    assert fast.uses_factored_forward()  # these shapes take the fast path
    plain = _plain(_adapter(algo, layer, use_dora))
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(1))
    outputs = []
    for adapter in (fast, plain):
        adapter.multiplier = 0.8
        out = _run(adapter, layer, x)
        out.pow(2).sum().backward()
        outputs.append(out.detach())
    _close(outputs[0], outputs[1], FP32_TOLERANCE)
    for (name, ours), theirs in zip(fast.named_parameters(), plain.parameters()):
        _close(ours.grad, theirs.grad, FP32_TOLERANCE)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_factored_rank_dropout_drops_the_same_rows_as_the_full_delta_path(algo):
    layer = _layer()
    fast, plain = _adapter(algo, layer, rank_dropout=0.5), _plain(_adapter(algo, layer, rank_dropout=0.5))
    fast.train(), plain.train(), layer.train()
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(11)
    ours = fast(x, layer(x))
    torch.manual_seed(11)
    theirs = plain(x, layer(x))
    _close(ours, theirs, FP32_TOLERANCE)
    assert (ours.abs().sum(0) == 0).any()  # some output rows really dropped


def test_factored_path_is_only_taken_where_it_is_cheaper():
    small = _layer(out_features=6, in_features=5)
    assert not LoHaAdapter("blocks.0.ffn.0", small, rank=4, scale=1.0).uses_factored_forward()  # 16·11 > 30
    wide = _layer(out_features=96, in_features=96)
    assert LoHaAdapter("blocks.0.ffn.0", wide, rank=4, scale=1.0).factored_cost() == 16 * 192
    assert LoHaAdapter("blocks.0.ffn.0", wide, rank=4, scale=1.0).uses_factored_forward()


def test_dora_norm_cache_follows_the_frozen_weight():
    layer = _layer()
    adapter = _adapter("lora", layer, use_dora=True)
    direct = lambda: (layer.weight + 0.75 * adapter.lora_up @ adapter.lora_down).detach().norm(dim=1)  # noqa: E731
    _close(adapter.dora_norm(), direct(), FP32_TOLERANCE)
    with torch.no_grad():
        layer.weight.mul_(1.5)  # a merge or a load changes W in place: the cached ||W||² must not survive it
    _close(adapter.dora_norm(), direct(), FP32_TOLERANCE)


@pytest.mark.parametrize("algo", ["lora", "dora", "loha", "lokr"])
def test_autocast_bf16_keeps_the_float32_plain_output_and_gradients(algo):
    layer = _layer()
    use_dora = algo == "dora"
    adapter = _adapter("lora" if use_dora else algo, layer, use_dora)
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(3))
    reference = _run(adapter, layer, x)
    reference.pow(2).mean().backward()
    reference_grads = [p.grad.clone() for p in adapter.parameters()]
    adapter.zero_grad()
    seen, output_delta = [], adapter.output_delta
    adapter.output_delta = lambda inner, base_out: seen.append(inner.dtype) or output_delta(inner, base_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(adapter, layer, x.to(torch.bfloat16))
    assert seen == [torch.bfloat16]  # the adapter computes on the bf16 input, no float32 copy
    out.float().pow(2).mean().backward()
    _close(out, reference, BF16_TOLERANCE)
    for ours, theirs in zip(adapter.parameters(), reference_grads):
        assert ours.dtype == torch.float32 and ours.grad.dtype == torch.float32  # float32 master weights
        _close(ours.grad, theirs, 5 * BF16_TOLERANCE)


@pytest.mark.parametrize("args", [["algo=lora"], ["algo=dora"], ["algo=loha"], ["algo=lokr"]])
def test_whole_model_loss_under_autocast_matches_float32(args, tiny_wan, inputs):
    network = AdapterNetwork.create(tiny_wan, NetworkConfig.from_network_args(4, 2.0, args)).inject()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    target = torch.randn(2, 4, 1, 4, 4, generator=generator)
    loss = lambda: F.mse_loss(tiny_wan(**inputs, return_dict=False)[0].float(), target)  # noqa: E731
    reference = loss().item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = loss().item()
    assert abs(fast - reference) <= BF16_TOLERANCE * abs(reference)

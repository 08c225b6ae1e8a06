"""Merging LoRA files into one: concatenation reproduces the weighted sum exactly; SVD keeps the best rank-r part and
reports the retained energy; allocations are unioned; DoRA and concatenating LoHa are refused with a sentence."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.__main__ import main
from backend.adapters.formats import load_lora
from backend.adapters.merge import delta_for_module
from backend.compose.merge_loras import merge_loras
from backend.errors import UserError
from backend.loraid.allocation import allocate
from backend.loraid.file_coverage import allocation_of_file

FIRST_HALF = [r"exclude_patterns=['blocks\.[23]\..*']"]


def _delta(lora, module, shape, multiplier=1.0):
    return delta_for_module(lora.parts(module), torch.zeros(shape), multiplier, lora.flags, module_name=module)


def _expected_sum(paths, multipliers, model):
    from backend.models.loading import original_state_dict
    shapes = {k[: -len(".weight")]: v.shape for k, v in original_state_dict(model).items() if k.endswith(".weight")}
    total: dict[str, torch.Tensor] = {}
    for path, multiplier in zip(paths, multipliers):
        lora = load_lora(path)
        for module in lora.modules:
            delta = _delta(lora, module, shapes[module], multiplier).double()
            total[module] = total.get(module, 0) + delta
    return total, shapes


def test_concat_reproduces_the_sum_exactly(tmp_path, kit):
    model = kit.make_tiny_wan()
    paths = [kit.save_network(kit.make_network(model, ["algo=locon"], rank=3, alpha=1.5, seed=1),
                              tmp_path / "a.safetensors"),
             kit.save_network(kit.make_network(model, FIRST_HALF, rank=2, alpha=4.0, seed=2),
                              tmp_path / "b.safetensors")]
    out = tmp_path / "ab.safetensors"
    assert main(["merge-loras", "--lora", *map(str, paths), "--multiplier", "1.0", "0.7", "--out", str(out),
                 "--allow_overlap"]) == 0
    merged = load_lora(out)
    expected, shapes = _expected_sum(paths, [1.0, 0.7], model)
    assert set(merged.modules) == set(expected)  # exactly the union of the inputs' modules
    for module, delta in expected.items():
        torch.testing.assert_close(_delta(merged, module, shapes[module]).double(), delta, atol=1e-6, rtol=0)
        shared = module in load_lora(paths[1]).modules
        assert merged.ranks[module] == (5 if shared else 3) and merged.scales[module] == 1.0
    # The merged file applied at 1.0 computes what both inputs applied at 1.0 / 0.7 compute.
    from backend.adapters.network import AdapterNetwork
    a = AdapterNetwork.from_weights(model, load_lora(paths[0]).tensors, multiplier=1.0, name="a").inject()
    b = AdapterNetwork.from_weights(model, load_lora(paths[1]).tensors, multiplier=0.7, name="b").inject()
    both = kit.run(model)
    a.remove(), b.remove()
    ab = AdapterNetwork.from_weights(model, merged.tensors, name="ab").inject()
    torch.testing.assert_close(kit.run(model), both, atol=1e-5, rtol=0)
    ab.remove()


def test_svd_resize_energy_and_exact_when_rank_allows(tmp_path, kit):
    model = kit.make_tiny_wan()
    paths = [kit.save_network(kit.make_network(model, ["algo=loha"], rank=2, seed=3), tmp_path / "h.safetensors"),
             kit.save_network(kit.make_network(model, rank=4, seed=4), tmp_path / "l.safetensors")]
    expected, shapes = _expected_sum(paths, [0.5, 1.0], model)
    exact = merge_loras(paths, [0.5, 1.0], tmp_path / "r32.safetensors", rank=32, allow_overlap=True)
    resized = merge_loras(paths, [0.5, 1.0], tmp_path / "r2.safetensors", rank=2, allow_overlap=True)
    small = load_lora(resized.out)
    for module, delta in expected.items():
        torch.testing.assert_close(_delta(load_lora(exact.out), module, shapes[module]).double(), delta,
                                   atol=1e-5, rtol=0)
        assert exact.energy[module] == pytest.approx(1.0, abs=1e-9)
        singular = np.linalg.svd(delta.reshape(delta.shape[0], -1).numpy(), compute_uv=False)
        assert resized.energy[module] == pytest.approx((singular[:2] ** 2).sum() / (singular ** 2).sum(), rel=1e-6)
        error = (_delta(small, module, shapes[module]).double() - delta).norm() ** 2
        assert float(error) == pytest.approx((singular[2:] ** 2).sum(), rel=1e-4, abs=1e-10)
        assert small.ranks[module] == 2


def test_allocations_are_unioned(tmp_path, kit):
    model = kit.make_tiny_wan()
    a_alloc, b_alloc = allocate(1, 4, 2), allocate(2, 4, 2)
    paths = [kit.save_network(kit.make_network(model, FIRST_HALF, seed=5), tmp_path / "a.safetensors",
                              loraid=1, allocation=a_alloc),
             kit.save_network(kit.make_network(model, [r"exclude_patterns=['blocks\.[01]\..*']"], seed=6),
                              tmp_path / "b.safetensors", loraid=2, allocation=b_alloc)]
    result = merge_loras(paths, [1.0, 1.0], tmp_path / "ab.safetensors")
    allocation = allocation_of_file(result.out)
    assert allocation.blocks == (0, 1, 2, 3) and allocation.num_blocks == 4
    assert json.loads(load_lora(result.out).metadata["loraid_studio.merged_loraids"]) == [1, 2]


def test_refusals(tmp_path, kit):
    model = kit.make_tiny_wan()
    dora = kit.save_network(kit.make_network(model, ["use_dora=True"] + FIRST_HALF), tmp_path / "d.safetensors")
    loha = kit.save_network(kit.make_network(model, ["algo=loha", r"exclude_patterns=['blocks\.[01]\..*']"]),
                            tmp_path / "h.safetensors")
    plain = kit.save_network(kit.make_network(model, FIRST_HALF), tmp_path / "p.safetensors")
    with pytest.raises(UserError, match="DoRA"):
        merge_loras([dora, loha], [1.0, 1.0], tmp_path / "x.safetensors", rank=4)
    with pytest.raises(UserError, match=r"set Rank \(rank\) to merge by SVD"):
        merge_loras([plain, loha], [1.0, 1.0], tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="allow_overlap"):
        merge_loras([plain, dora], [1.0, 1.0], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()

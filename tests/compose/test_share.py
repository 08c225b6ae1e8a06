"""Safe sharing: block-disjoint LORAIDs change nothing; overlapping LoRAs blend only their shared modules, keep every
other tensor bit for bit, never gain a module, and the blend is the best rank-r approximation of the stated mix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.__main__ import main
from backend.adapters.formats import load_lora
from backend.adapters.merge import delta_for_module
from backend.compose.share import NOTHING_SHARED, share_between
from backend.errors import UserError
from backend.loraid.allocation import allocate

FIRST_HALF = [r"exclude_patterns=['blocks\.[23]\..*']"]
SECOND_HALF = [r"exclude_patterns=['blocks\.[01]\..*']"]


def _delta(lora, module):
    down, up = lora.parts(module)["lora_down.weight"], lora.parts(module)["lora_up.weight"]
    return delta_for_module(lora.parts(module), torch.zeros(up.shape[0], down.shape[1]), 1.0).double()


def test_block_disjoint_loraids_change_nothing(tmp_path, kit, capsys):
    model = kit.make_tiny_wan()
    paths = [kit.save_network(kit.make_network(model, FIRST_HALF, seed=1), tmp_path / "a.safetensors",
                              loraid=1, allocation=allocate(1, 4, 2)),
             kit.save_network(kit.make_network(model, SECOND_HALF, seed=2), tmp_path / "b.safetensors",
                              loraid=2, allocation=allocate(2, 4, 2))]
    assert main(["share", "--lora", *map(str, paths), "--out_dir", str(tmp_path / "out")]) == 0
    assert NOTHING_SHARED in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_blend_stays_inside_shared_modules(tmp_path, kit):
    model = kit.make_tiny_wan()
    a_path = kit.save_network(kit.make_network(model, rank=4, seed=3), tmp_path / "a.safetensors")
    b_path = kit.save_network(kit.make_network(model, SECOND_HALF, rank=8, alpha=8.0, seed=4),
                              tmp_path / "b.safetensors")
    a, b = load_lora(a_path), load_lora(b_path)
    result = share_between([a_path, b_path], 0.4, tmp_path / "out")
    assert result.changed and set(result.shared_modules) == set(b.modules)
    new_a, new_b = load_lora(result.outputs["a.safetensors"]), load_lora(result.outputs["b.safetensors"])
    assert set(new_a.tensors) == set(a.tensors) and set(new_b.tensors) == set(b.tensors)
    assert new_a.ranks == a.ranks and new_b.alphas == b.alphas
    for key, tensor in a.tensors.items():  # A's own blocks 0-1: bit for bit
        if key.startswith(("lora_unet_blocks_0_", "lora_unet_blocks_1_")):
            assert torch.equal(new_a.tensors[key], tensor), key
    for module in b.modules:
        for own, new, other in ((a, new_a, b), (b, new_b, a)):
            target = 0.6 * _delta(own, module) + 0.4 * (_delta(own, module) + _delta(other, module)) / 2
            singular = np.linalg.svd(target.numpy(), compute_uv=False)
            rank = own.ranks[module]
            tail = np.sqrt((singular[rank:] ** 2).sum() / (singular ** 2).sum())
            error = float((_delta(new, module) - target).norm() / target.norm())
            assert error == pytest.approx(tail, rel=1e-3, abs=1e-6)
            assert result.truncation_error[own.path.name][module] == pytest.approx(tail, rel=1e-6, abs=1e-9)


def test_dora_is_refused(tmp_path, kit):
    model = kit.make_tiny_wan()
    dora = kit.save_network(kit.make_network(model, ["use_dora=True"]), tmp_path / "d.safetensors")
    plain = kit.save_network(kit.make_network(model), tmp_path / "p.safetensors")
    with pytest.raises(UserError, match="LoRA / LoCon"):
        share_between([dora, plain], 0.5, tmp_path / "out")

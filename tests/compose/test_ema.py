"""Post-hoc EMA: γ from σ_rel, closed-form weights (even / uneven steps, γ = 0, beta recursion), discovery of a
run's checkpoints, factor and delta averaging vs independent sums, and the refusals."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from backend.__main__ import main
from backend.adapters.formats import load_lora, save_lora
from backend.adapters.merge import delta_for_module
from backend.adapters.metadata import build_metadata
from backend.compose.ema import post_hoc_ema
from backend.compose.ema_weights import beta_weights, gamma_from_sigma_rel, power_weights
from backend.errors import UserError
from backend.fileio import save_safetensors_atomic
from backend.models.names import lora_key_prefix

MODULES = ["blocks.0.self_attn.q", "blocks.0.ffn.0", "blocks.1.cross_attn.o"]
SHAPES = {"blocks.0.self_attn.q": (32, 32), "blocks.0.ffn.0": (32, 64), "blocks.1.cross_attn.o": (32, 32)}


def _tensors(seed, rank=4, alpha=2.0, shared_down=False):
    generator = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(99)
    out = {}
    for module in MODULES:
        fan_in, fan_out = SHAPES[module]
        prefix = lora_key_prefix(module)
        out[f"{prefix}.lora_down.weight"] = torch.randn(rank, fan_in, generator=fixed if shared_down else generator)
        out[f"{prefix}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator)
        out[f"{prefix}.alpha"] = torch.tensor(alpha)
    return out


def _save(path, seed, step=None, **kwargs):
    metadata = build_metadata("lora", kwargs.get("rank", 4), 2.0, [], {}, None, step=step)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_lora(path, _tensors(seed, **kwargs), metadata)


@pytest.mark.parametrize("sigma_rel, gamma", [(0.05, 16.97), (0.10, 6.94), (0.15, 3.56), (0.20, 1.83), (0.25, 0.72)])
def test_gamma_from_sigma_rel(sigma_rel, gamma):
    value = gamma_from_sigma_rel(sigma_rel)
    assert value == pytest.approx(gamma, abs=0.01)
    s = sigma_rel ** -2
    assert value ** 3 + 7 * value ** 2 + (16 - s) * value + (12 - s) == pytest.approx(0, abs=1e-8)


def test_sigma_rel_out_of_range_is_refused():
    for bad in (0.0, 0.29, 1.0, -0.1):
        with pytest.raises(UserError, match="1/√12"):
            gamma_from_sigma_rel(bad)


def test_power_weights_closed_forms():
    assert power_weights([100, 200, 300, 400], 0.0) == pytest.approx([0.25] * 4)
    gamma, total = gamma_from_sigma_rel(0.2), 6
    expected = [(t ** (gamma + 1) - (t - 1) ** (gamma + 1)) / total ** (gamma + 1) for t in range(1, total + 1)]
    weights = power_weights([250 * t for t in range(1, total + 1)], gamma)
    assert weights == pytest.approx(expected, rel=1e-12) and sum(weights) == pytest.approx(1.0)
    assert weights[0] > 0  # the first checkpoint keeps its weight
    uneven = [10, 20, 100]
    expected = [(10 ** 2.5 - 0) / 100 ** 2.5, (20 ** 2.5 - 10 ** 2.5) / 100 ** 2.5,
                (100 ** 2.5 - 20 ** 2.5) / 100 ** 2.5]
    assert power_weights(uneven, 1.5) == pytest.approx(expected, rel=1e-12)
    assert power_weights([10, 20, 30], 1.5) != pytest.approx(power_weights(uneven, 1.5))
    assert sum(power_weights([10 ** 6, 2 * 10 ** 6], 5000.0)) == pytest.approx(1.0)  # no overflow


def test_beta_weights_follow_the_recursion():
    values = [3.0, -1.0, 4.0, 1.5, 9.0]
    average, count = values[0], len(values)
    for i in range(2, count + 1):
        beta = 0.9 + (0.99 - 0.9) * (i - 2) / (count - 2)
        average = beta * average + (1 - beta) * values[i - 1]
    weights = beta_weights(count, 0.9, 0.99)
    assert sum(w * v for w, v in zip(weights, values)) == pytest.approx(average)
    assert sum(weights) == pytest.approx(1.0) and weights[0] > 0


def test_run_folder_discovery_and_factor_average(tmp_path):
    run = tmp_path / "run"
    steps = [100, 300, 400, 1000]  # uneven
    paths = [_save(run / f"lora-step{s:06d}.safetensors", seed=i, step=s) for i, s in enumerate(steps)]
    _save(run / "lora.safetensors", seed=3, step=1000)  # the final file: the same weights as the last step file
    _save(run / "lora-step000400-state" / "lora.safetensors", seed=2, step=400)  # a copy inside a state folder
    state_dir = run / "lora-step000400-state"
    save_safetensors_atomic({"state.0.exp_avg": torch.zeros(3)}, state_dir / "optimizer.safetensors")
    out = run / "ema.safetensors"
    assert main(["ema", str(run), "--sigma_rel", "0.15", "--out", str(out)]) == 0
    made = load_lora(out)
    record = json.loads(made.metadata["loraid_studio.ema"])
    assert [c["step"] for c in record["checkpoints"]] == steps
    weights = power_weights(steps, gamma_from_sigma_rel(0.15))
    assert [c["weight"] for c in record["checkpoints"]] == pytest.approx(weights)
    inputs = [load_lora(p) for p in paths]
    for key, tensor in made.tensors.items():
        if not key.endswith(".alpha"):
            expected = sum(w * lora.tensors[key].double() for w, lora in zip(weights, inputs))
            torch.testing.assert_close(tensor.double(), expected, atol=1e-6, rtol=0)
    assert set(made.modules) == set(MODULES)
    # Running again beside the earlier result does not average the result into itself.
    again = post_hoc_ema([run], run / "ema2.safetensors", sigma_rel=0.15)
    assert len(again.files) == 4 and any("earlier EMA result" in n for n in again.notes)


def test_delta_space_reproduces_the_mean_delta_when_rank_allows(tmp_path):
    paths = [_save(tmp_path / f"c{i}.safetensors", seed=i, step=100 * (i + 1), shared_down=True) for i in range(3)]
    result = post_hoc_ema(paths, tmp_path / "ema.safetensors", uniform=True, space="delta")
    made, inputs = load_lora(result.out), [load_lora(p) for p in paths]
    for module in MODULES:
        fan_in, fan_out = SHAPES[module]
        zeros = torch.zeros(fan_out, fan_in)
        mean = sum(delta_for_module(lora.parts(module), zeros, 1.0).double() for lora in inputs) / 3
        torch.testing.assert_close(delta_for_module(made.parts(module), zeros, 1.0).double(), mean, atol=1e-5, rtol=0)
        assert made.ranks[module] == 4 and made.alphas[module] == 2.0
        assert result.truncation_error[module] < 1e-6
    # Independent downs: the mean ΔW has rank 12 > 4, so truncation shows, and equals the SVD tail.
    paths = [_save(tmp_path / f"d{i}.safetensors", seed=i, step=100 * (i + 1)) for i in range(3)]
    result = post_hoc_ema(paths, tmp_path / "ema_d.safetensors", uniform=True, space="delta")
    inputs = [load_lora(p) for p in paths]
    module = MODULES[0]
    mean = sum(delta_for_module(lora.parts(module), torch.zeros(32, 32), 1.0).double() for lora in inputs) / 3
    singular = np.linalg.svd(mean.numpy(), compute_uv=False)
    assert result.truncation_error[module] == pytest.approx(np.sqrt((singular[4:] ** 2).sum() / (singular ** 2).sum()))


def test_mismatch_and_mtime_fallback(tmp_path):
    a = _save(tmp_path / "a.safetensors", seed=1, step=100)
    b = _save(tmp_path / "b.safetensors", seed=2, step=200, rank=8)
    with pytest.raises(UserError, match="rank"):
        post_hoc_ema([a, b], tmp_path / "x.safetensors")
    c, d = _save(tmp_path / "m/c.safetensors", seed=3), _save(tmp_path / "m/d.safetensors", seed=4)
    os.utime(c, (1_000_000, 1_000_000))
    os.utime(d, (500_000, 500_000))  # d is older, so it comes first
    result = post_hoc_ema([tmp_path / "m"], tmp_path / "y.safetensors", uniform=False, sigma_rel=0.2)
    assert [p.name for p in result.files] == ["d.safetensors", "c.safetensors"] and result.steps == [1, 2]
    assert any(n.startswith("warning:") and "modification time" in n for n in result.notes)
    high = _save(tmp_path / "x-step000100-high_noise.safetensors", seed=6, step=100)
    low = _save(tmp_path / "x-step000200-low_noise.safetensors", seed=7, step=200)
    with pytest.raises(UserError, match="once per expert"):
        post_hoc_ema([high, low], tmp_path / "x.safetensors")
    clash = _save(tmp_path / "clash.safetensors", seed=5, step=100)
    with pytest.raises(UserError, match="both say training step 100"):
        post_hoc_ema([a, clash], tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="pick one"):
        post_hoc_ema([a, b], tmp_path / "x.safetensors", sigma_rel=0.2, uniform=True)
    assert not (tmp_path / "x.safetensors").exists()

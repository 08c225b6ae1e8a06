"""Weight-space interference from factors vs ΔW formed explicitly; cross-talk on a toy model and on a tiny Wan."""
from __future__ import annotations

import math

import pytest
import torch

from backend.loraid.allocation import allocate
from backend.loraid.interference import (cross_talk, dense_delta, factor_inner, factor_norm, module_interference,
                                         principal_cosines, subspace_overlap, weight_space_pair)
from backend.loraid.module_names import owned_modules
from backend.loraid.report import engine_model_fn, wan_probes


def random_parts(out: int, inp: int, rank: int, alpha: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"lora_down.weight": torch.randn(rank, inp, generator=g), "lora_up.weight": torch.randn(out, rank, generator=g),
            "alpha": torch.tensor(alpha)}


def projector(matrix: torch.Tensor) -> torch.Tensor:
    """Orthogonal projector onto the column space, via the pseudo-inverse (independent of QR / SVD bases)."""
    matrix = matrix.double()
    return matrix @ torch.linalg.pinv(matrix)


def test_inner_products_and_norms_from_factors_equal_the_formed_delta():
    for seed in range(5):
        a, b = random_parts(13, 9, 3, 1.5, seed), random_parts(13, 9, 5, 4.0, seed + 100)
        delta_a = (1.5 / 3) * a["lora_up.weight"].double() @ a["lora_down.weight"].double()
        delta_b = (4.0 / 5) * b["lora_up.weight"].double() @ b["lora_down.weight"].double()
        assert torch.allclose(dense_delta(a), delta_a)
        inner = factor_inner(a["lora_up.weight"].double(), a["lora_down.weight"].double(),
                             b["lora_up.weight"].double(), b["lora_down.weight"].double())
        assert inner * (1.5 / 3) * (4.0 / 5) == pytest.approx(float((delta_a * delta_b).sum()), rel=1e-10)
        assert factor_norm(a["lora_up.weight"].double(), a["lora_down.weight"].double()) * 0.5 == \
            pytest.approx(float(delta_a.norm()), rel=1e-10)
        result = module_interference("m", a, b)
        expected_cos = float((delta_a * delta_b).sum() / (delta_a.norm() * delta_b.norm()))
        assert result.cosine == pytest.approx(expected_cos, rel=1e-9, abs=1e-12)
        assert (result.norm_a, result.norm_b) == (pytest.approx(float(delta_a.norm())),
                                                  pytest.approx(float(delta_b.norm())))
        assert result.method == "factors"


def test_identical_and_opposite_updates():
    a = random_parts(8, 6, 2, 2.0, 1)
    assert module_interference("m", a, a).cosine == pytest.approx(1.0)
    negated = dict(a, **{"lora_up.weight": -a["lora_up.weight"]})
    assert module_interference("m", a, negated).cosine == pytest.approx(-1.0)
    zero = dict(a, **{"lora_up.weight": torch.zeros_like(a["lora_up.weight"])})
    assert module_interference("m", a, zero).cosine is None


def test_subspace_overlap_against_projectors():
    g = torch.Generator().manual_seed(0)
    for rank_a, rank_b in ((2, 3), (4, 4), (1, 5)):
        a, b = torch.randn(12, rank_a, generator=g), torch.randn(12, rank_b, generator=g)
        cosines = principal_cosines(a, b)
        # Σ cos²θ_i = ‖P_a P_b‖_F², and the largest cosine is the spectral norm of P_a P_b.
        product = projector(a) @ projector(b)
        assert float((cosines ** 2).sum()) == pytest.approx(float(product.pow(2).sum()), rel=1e-8)
        assert float(cosines[0]) == pytest.approx(float(torch.linalg.matrix_norm(product, 2)), rel=1e-8)
    shared = torch.randn(12, 2, generator=g)
    inside = shared @ torch.randn(2, 2, generator=g)  # the same column space, other basis
    assert subspace_overlap(shared, inside) == pytest.approx({"mean_cos2": 1.0, "max_cos": 1.0})
    basis = torch.eye(12, dtype=torch.float64)
    assert subspace_overlap(basis[:, :3], basis[:, 3:6]) == {"mean_cos2": 0.0, "max_cos": 0.0}
    # A rank-deficient factor (a repeated column) is measured on its true 1-dimensional column space.
    deficient = torch.cat([basis[:, :1], basis[:, :1]], dim=1)
    assert principal_cosines(deficient, basis[:, :2]).tolist() == pytest.approx([1.0])


def test_lycoris_modules_use_the_formed_delta():
    g = torch.Generator().manual_seed(2)
    loha = {"hada_w1_a": torch.randn(6, 2, generator=g), "hada_w1_b": torch.randn(2, 5, generator=g),
            "hada_w2_a": torch.randn(6, 2, generator=g), "hada_w2_b": torch.randn(2, 5, generator=g),
            "alpha": torch.tensor(2.0)}
    lokr = {"lokr_w1": torch.randn(2, 1, generator=g), "lokr_w2_a": torch.randn(3, 2, generator=g),
            "lokr_w2_b": torch.randn(2, 5, generator=g), "alpha": torch.tensor(1.0)}
    expected_loha = (loha["hada_w1_a"] @ loha["hada_w1_b"]) * (loha["hada_w2_a"] @ loha["hada_w2_b"])
    assert torch.allclose(dense_delta(loha).float(), expected_loha, atol=1e-6)
    expected_lokr = 0.5 * torch.kron(lokr["lokr_w1"], lokr["lokr_w2_a"] @ lokr["lokr_w2_b"])
    assert torch.allclose(dense_delta(lokr).float(), expected_lokr, atol=1e-6)
    result = module_interference("m", loha, lokr)
    expected = float((expected_loha * expected_lokr).sum() / (expected_loha.norm() * expected_lokr.norm()))
    assert result.cosine == pytest.approx(expected, rel=1e-5) and result.method == "formed ΔW"
    assert result.output_overlap is None


def test_weight_space_pair_only_over_shared_modules():
    a = {"blocks.0.ffn.0": random_parts(8, 4, 2, 1.0, 0), "blocks.1.ffn.0": random_parts(8, 4, 2, 1.0, 1)}
    b = {"blocks.1.ffn.0": random_parts(8, 4, 2, 1.0, 2), "blocks.2.ffn.0": random_parts(8, 4, 2, 1.0, 3)}
    pair = weight_space_pair("a", "b", a, b)
    assert [m.module for m in pair.modules] == ["blocks.1.ffn.0"]
    assert pair.total_cosine == pytest.approx(pair.modules[0].cosine)
    assert weight_space_pair("a", "c", a, {"blocks.5.ffn.0": a["blocks.0.ffn.0"]}).modules == []


def test_cross_talk_on_a_toy_model_with_a_known_answer():
    """f(x) = x + Σ m·d with additive LoRAs: f_A − f_0 = d_A, f_AB − f_A = m_B·d_B, so the ratio is ‖m_B d_B‖ / ‖d_A‖."""
    d_a, d_b = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0])

    def model_fn(loras, x):
        return x + sum((m * lora for lora, m in loras), torch.zeros(2))

    result = cross_talk(model_fn, d_a, d_b, [torch.zeros(2), torch.ones(2)], 1.0, 0.5, ("A", "B"))
    assert result.ratio == pytest.approx(0.5 / 5.0)
    assert result.own_change == pytest.approx(math.sqrt(2) * 5.0)
    assert cross_talk(model_fn, torch.zeros(2), d_b, [torch.zeros(2)]).ratio is None


def test_disjoint_blocks_give_independent_weights_but_not_independent_outputs(kit):
    """On a tiny Wan: two LoRAs on disjoint blocks share no module, yet B moves A's outputs (cross-talk > 0);
    B at multiplier 0 adds exactly nothing, and the model is untouched afterwards."""
    from backend.adapters.formats import lora_from_state_dict

    model = kit.make_tiny_wan()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, second = allocate(1, 4, 2), allocate(2, 4, 2)
    lora_a = lora_from_state_dict(kit.lora_tensors(owned_modules(first), rank=2, seed=1))
    lora_b = lora_from_state_dict(kit.lora_tensors(owned_modules(second), rank=2, seed=2))
    assert weight_space_pair("a", "b", {}, {}).modules == []
    assert not set(lora_a.modules) & set(lora_b.modules)
    model_fn = engine_model_fn(model)
    probes = wan_probes(model, count=2, latent_size=4)
    result = cross_talk(model_fn, lora_a, lora_b, probes)
    assert result.own_change > 0 and result.ratio > 1e-3
    assert cross_talk(model_fn, lora_a, lora_b, probes, multiplier_b=0.0).added_change == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

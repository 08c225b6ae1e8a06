"""Capacity against hand computations for Wan2.1 1.3B / Wan2.2 5B / 14B, the diffusers shapes, and real file sizes."""
from __future__ import annotations

import pytest

from backend.adapters.formats import save_lora
from backend.loraid.allocation import allocate, allocate_explicit
from backend.loraid.capacity import WAN_DIMS, ModelDims, capacity, lora_file_size, typical_metadata
from backend.loraid.model_facts import facts_for_kind
from backend.loraid.module_names import owned_modules
from backend.models.checkpoint import read_safetensors_header


def per_block_by_hand(dim: int, ffn: int, rank: int, image_dim: int | None = None) -> int:
    attention = 8 * rank * (dim + dim)  # self/cross q, k, v, o
    image = 2 * rank * (image_dim + dim) if image_dim else 0  # k_img, v_img
    return attention + image + rank * (dim + ffn) + rank * (ffn + dim)


@pytest.mark.parametrize("kind, dim, ffn, blocks", [("wan2.1-t2v-1.3b", 1536, 8960, 30),
                                                    ("wan2.2-ti2v-5b", 3072, 14336, 30),
                                                    ("wan2.1-t2v-14b", 5120, 13824, 40)])
def test_parameters_match_a_hand_computation(kind, dim, ffn, blocks):
    dims = facts_for_kind(kind).dims
    assert dims == WAN_DIMS[kind] == ModelDims(blocks, dim, ffn)
    cap = capacity(dims, allocate(2, blocks, 4), rank=32)
    assert cap.modules == 40
    assert cap.lora_parameters == 4 * per_block_by_hand(dim, ffn, 32)
    base_per_block = 8 * dim * dim + 2 * dim * ffn
    assert cap.base_parameters == 4 * base_per_block
    assert cap.fraction_of_allocated == pytest.approx(cap.lora_parameters / (4 * base_per_block))
    assert cap.fraction_of_model == pytest.approx(4 / blocks)


def test_one_point_three_b_rank_32_per_block_number():
    cap = capacity(WAN_DIMS["wan2.1-t2v-1.3b"], allocate_explicit([7], 30), rank=32)
    assert cap.lora_parameters == 8 * 32 * 3072 + 32 * (1536 + 8960) + 32 * (8960 + 1536) == 1_458_176


def test_i2v_image_projections_and_experts():
    facts = facts_for_kind("wan2.1-i2v-14b")
    cap = capacity(facts.dims, allocate(1, 40, 1), rank=16)
    assert cap.modules == 12
    assert cap.lora_parameters == per_block_by_hand(5120, 13824, 16, image_dim=5120)
    a14b = facts_for_kind("wan2.2-t2v-a14b")
    assert a14b.experts == ("high", "low") and a14b.num_blocks == 40
    assert capacity(a14b.dims, allocate(1, 40, 5, "both"), 8).files == 2


@pytest.mark.parametrize("kind", ["wan2.1-t2v-1.3b", "wan2.1-i2v-14b"])
def test_linear_shapes_agree_with_the_diffusers_model(kind):
    """Our architecture numbers against WanTransformer3DModel built from the shipped config (on the meta device)."""
    from backend.models.loading import expected_wan_shapes
    from backend.models.registry import get_model_kind

    shapes = expected_wan_shapes(get_model_kind(kind).config_dir())
    dims = facts_for_kind(kind).dims
    for name in owned_modules(allocate_explicit([0, dims.num_blocks - 1], dims.num_blocks), dims.targets):
        fan_in, fan_out = dims.linear_shape(name)
        assert shapes[f"{name}.weight"] == (fan_out, fan_in), name


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_file_size_estimate_matches_a_saved_file(tmp_path, kit, precision):
    dims = ModelDims(4, 32, 64)
    allocation = allocate(2, 4, 2, model="demo-t2v")
    modules = owned_modules(allocation)
    metadata = typical_metadata(allocation, 8)
    path = save_lora(tmp_path / "x.safetensors", kit.lora_tensors(modules, rank=8), metadata, precision)
    estimate = capacity(dims, allocation, 8).file_bytes[precision]
    assert abs(estimate - path.stat().st_size) <= 0.01 * path.stat().st_size
    assert lora_file_size(dims, modules, 8, precision, metadata) == path.stat().st_size


def test_file_size_of_musubis_own_file(musubi_dir):
    """musubi's blocks-0/1 LoRA (dim 64, ffn 128, rank 4, fp32) with its own header metadata."""
    file = musubi_dir / "lora_blocks_0_1.safetensors"
    _, metadata = read_safetensors_header(file)
    allocation = allocate(1, 4, 2)
    estimate = lora_file_size(ModelDims(4, 64, 128), owned_modules(allocation), 4, "fp32", metadata)
    assert abs(estimate - file.stat().st_size) <= 0.01 * file.stat().st_size

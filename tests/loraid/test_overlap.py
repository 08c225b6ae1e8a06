"""The overlap guard refuses LoRAs that change the same weights (module level) or blocks (block level)."""
from __future__ import annotations

import pytest
import torch

from backend.errors import UserError
from backend.loraid.allocation import allocate
from backend.loraid.module_names import owned_modules
from backend.loraid.overlap import find_overlaps, guard, guard_files


def test_two_loras_sharing_a_block_are_refused_and_the_block_is_named():
    a = set(owned_modules(allocate(1, 30, 6)))  # blocks 0-5
    b = set(owned_modules(allocate(2, 30, 4)))  # blocks 4-7
    with pytest.raises(UserError) as refused:
        guard({"a.safetensors": a, "b.safetensors": b})
    message = str(refused.value)
    assert message.startswith("a.safetensors and b.safetensors both change blocks 4-5 (modules blocks.4.self_attn.q, "
                              "blocks.4.self_attn.k, blocks.4.self_attn.v, ... 20 in all)")
    assert message.endswith("pass --allow_overlap to merge anyway.")
    conflicts = guard({"a.safetensors": a, "b.safetensors": b}, allow_overlap=True)
    assert [(c.first, c.second, c.blocks, len(c.modules)) for c in conflicts] == [
        ("a.safetensors", "b.safetensors", (4, 5), 20)]


def test_disjoint_ids_pass_and_every_pair_is_checked():
    coverages = {f"id{n}": set(owned_modules(allocate(n, 40, 5))) for n in range(1, 9)}
    assert guard(coverages) == []
    coverages["late"] = {"blocks.39.ffn.2", "blocks.3.self_attn.q"}
    conflicts = find_overlaps(coverages)
    assert [(c.first, c.second, c.blocks) for c in conflicts] == [("id1", "late", (3,)), ("id8", "late", (39,))]


def test_module_groups_of_one_block_differ_by_level():
    self_attn = set(owned_modules(allocate(1, 30, 1, module_group_split=True)))  # block 0 self_attn
    ffn = set(owned_modules(allocate(3, 30, 1, module_group_split=True)))  # block 0 ffn
    coverages = {"sa.safetensors": self_attn, "ffn.safetensors": ffn}
    assert guard(coverages) == []  # weights are independent
    with pytest.raises(UserError, match=r"both change block 0 \(different modules inside them\)"):
        guard(coverages, level="block")


def test_top_level_modules_are_named():
    with pytest.raises(UserError, match="top-level head.head"):
        guard({"x": {"head.head"}, "y": {"head.head", "blocks.0.ffn.0"}})


def test_files_on_disk(musubi_dir, tmp_path, kit):
    """musubi's full LoRA and its blocks-0/1 slice overlap in blocks 0 and 1; two disjoint slices do not."""
    with pytest.raises(UserError, match="lora_full.safetensors and lora_blocks_0_1.safetensors both change blocks 0-1"):
        guard_files([musubi_dir / "lora_full.safetensors", musubi_dir / "lora_blocks_0_1.safetensors"])
    one, two = allocate(1, 4, 2), allocate(2, 4, 2)
    files = [kit.save_loraid_file(tmp_path / "one.safetensors", one, owned_modules(one)),
             kit.save_loraid_file(tmp_path / "two.safetensors", two, owned_modules(two))]
    assert guard_files(files) == []
    with pytest.raises(UserError, match="listed twice"):
        guard_files([files[0], files[0]])


def test_coverage_of_a_comfyui_layout_file(tmp_path, kit):
    """Files in another layout (ComfyUI `diffusion_model.<name>.lora_A/B`) are read through the adapter formats."""
    from safetensors.torch import save_file

    from backend.loraid.file_coverage import coverage_of_file

    tensors = {}
    for module in ("blocks.2.self_attn.q", "blocks.3.ffn.2"):
        fan_in, fan_out = kit.tiny_shape(module)
        tensors[f"diffusion_model.{module}.lora_A.weight"] = torch.ones(2, fan_in)
        tensors[f"diffusion_model.{module}.lora_B.weight"] = torch.ones(fan_out, 2)
    save_file(tensors, str(tmp_path / "comfy.safetensors"))
    assert coverage_of_file(tmp_path / "comfy.safetensors") == {"blocks.2.self_attn.q", "blocks.3.ffn.2"}

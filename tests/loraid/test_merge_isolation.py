"""Merging block-disjoint LORAIDs into the base: A's tensors are bit-identical whatever else is merged, in any order;
tensors outside A∪B stay the base; every LoRA key is used. (Merged in the model through the adapter engine.)"""
from __future__ import annotations

import torch

from backend.adapters.formats import load_lora
from backend.adapters.network import AdapterNetwork
from backend.loraid.allocation import allocate
from backend.loraid.module_names import owned_modules
from backend.loraid.overlap import guard_files
from backend.models.names import block_index, diffusers_to_wan


def merged_state(kit, loras) -> dict[str, torch.Tensor]:
    model = kit.make_tiny_wan()
    for lora_file in loras:
        network = AdapterNetwork.from_weights(model, lora_file.tensors, lora_file.flags, multiplier=0.8)
        assert set(network.state_dict_for_save()) == set(lora_file.tensors)  # every key of the file is used
        network.merge_into_model()
    return {diffusers_to_wan(k): v.clone() for k, v in model.state_dict().items()}


def test_merge_order_never_touches_another_loraids_blocks(tmp_path, kit):
    a_alloc, b_alloc = allocate(1, 4, 2), allocate(4, 4, 1)  # blocks 0-1 and block 3; block 2 belongs to no one
    paths = [kit.save_loraid_file(tmp_path / "a.safetensors", a_alloc, owned_modules(a_alloc), rank=3, seed=1),
             kit.save_loraid_file(tmp_path / "b.safetensors", b_alloc, owned_modules(b_alloc), rank=2, seed=2)]
    assert guard_files(paths) == []
    lora_a, lora_b = load_lora(paths[0]), load_lora(paths[1])
    base = merged_state(kit, [])
    only_a = merged_state(kit, [lora_a])
    only_b = merged_state(kit, [lora_b])
    a_then_b = merged_state(kit, [lora_a, lora_b])
    b_then_a = merged_state(kit, [lora_b, lora_a])
    assert a_then_b.keys() == base.keys()
    changed_by_a = {f"{m}.weight" for m in lora_a.modules}
    changed_by_b = {f"{m}.weight" for m in lora_b.modules}
    for name in base:
        block = block_index(name)
        if block in a_alloc.blocks:
            assert torch.equal(a_then_b[name], only_a[name]) and torch.equal(b_then_a[name], only_a[name]), name
        elif block in b_alloc.blocks:
            assert torch.equal(a_then_b[name], only_b[name]) and torch.equal(b_then_a[name], only_b[name]), name
        else:
            assert torch.equal(a_then_b[name], base[name]) and torch.equal(b_then_a[name], base[name]), name
        # Each adapted weight really changed; nothing else did.
        assert (not torch.equal(a_then_b[name], base[name])) == (name in changed_by_a | changed_by_b), name

"""The workspace registry: register, rebuild from file headers, taken / free IDs, the warning before training."""
from __future__ import annotations

import json

import pytest

from backend.adapters.metadata import build_metadata
from backend.errors import UserError
from backend.loraid.allocation import allocate, allocate_explicit
from backend.loraid.module_names import owned_modules
from backend.loraid.registry import LoraidRegistry
from backend.workspace import Workspace


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    return ws


def test_register_then_warn_before_training_a_taken_id(workspace):
    registry = LoraidRegistry.for_workspace(workspace)
    first = allocate(2, 30, 5, model="wan2.1-t2v-1.3b")
    registry.register(workspace.loras / "alice.safetensors", first)
    saved = json.loads(workspace.loraid_registry.read_text())
    assert saved["entries"][0]["file"] == "loras/alice.safetensors"
    assert registry.taken_ids() == {2: ["loras/alice.safetensors"]}
    assert registry.free_ids(30, 5) == [1, 3, 4, 5, 6]
    warning = registry.check_before_training(allocate(2, 30, 5, model="wan2.1-t2v-1.3b"))
    assert "LORAID 2 is already taken" in warning and "loras/alice.safetensors" in warning
    assert "blocks 5-9" in warning
    assert registry.check_before_training(allocate(3, 30, 5)) is None
    # Another layout is compared by the blocks it really owns: k=2, ID 4 owns blocks 6-7, inside alice's slice.
    assert "alice.safetensors" in registry.check_before_training(allocate(4, 30, 2))
    assert registry.free_ids(30, 2) == [1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # ID 3 = blocks 4-5
    # Re-registering the same file replaces its entry.
    registry.register(workspace.loras / "alice.safetensors", allocate(6, 30, 5))
    assert registry.taken_ids() == {6: ["loras/alice.safetensors"]}


def test_other_models_and_other_experts_do_not_collide(workspace):
    registry = LoraidRegistry.for_workspace(workspace)
    registry.register(workspace.loras / "high.safetensors", allocate(1, 40, 4, "high", model="wan2.2-t2v-a14b"))
    assert registry.check_before_training(allocate(1, 40, 4, "low", model="wan2.2-t2v-a14b")) is None
    assert "high.safetensors" in registry.check_before_training(allocate(1, 40, 4, "both", model="wan2.2-t2v-a14b"))
    assert registry.check_before_training(allocate(1, 30, 4)) is None  # a 30-block model
    assert registry.check_before_training(allocate(1, 40, 4, model="wan2.1-t2v-14b", expert="high")) is None
    assert registry.taken_ids(model="wan2.1-t2v-14b") == {}
    assert registry.taken_ids(model="wan2.2-t2v-a14b") == {1: ["loras/high.safetensors"]}


def test_module_groups_in_one_block_do_not_collide(workspace):
    registry = LoraidRegistry.for_workspace(workspace)
    registry.register(workspace.loras / "a.safetensors", allocate(1, 8, 1, module_group_split=True))
    assert registry.check_before_training(allocate(2, 8, 1, module_group_split=True)) is None
    assert "a.safetensors" in registry.check_before_training(allocate(1, 8, 2))


def test_scan_rebuilds_from_file_headers(workspace, kit):
    save_loraid_file = kit.save_loraid_file
    loras = workspace.loras
    one, two = allocate(1, 4, 2, model="demo-t2v"), allocate(2, 4, 2, model="demo-t2v")
    save_loraid_file(loras / "one.safetensors", one, owned_modules(one))
    save_loraid_file(loras / "sub" / "two.safetensors", two, owned_modules(two))
    # A file from an older tool: only ss_loraid, no allocation record -> the blocks it really covers.
    legacy_md = {"ss_loraid": "3", "ss_network_dim": "2"}
    save_loraid_file(loras / "legacy.safetensors", None, ["blocks.3.self_attn.q", "blocks.3.ffn.0"], metadata=legacy_md)
    # A plain LoRA without an ID is not registered; neither is a damaged file.
    save_loraid_file(loras / "plain.safetensors", None, ["blocks.0.ffn.0"],
                     metadata=build_metadata("lora", 2, 1.0, [], {}, None))
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file")
    registry = LoraidRegistry.for_workspace(workspace)
    registry.register(workspace.root / "gone.safetensors", allocate(4, 4, 1))  # file missing: dropped by scan
    entries = registry.scan(loras)
    assert sorted(e.file for e in entries) == ["loras/legacy.safetensors", "loras/one.safetensors",
                                               "loras/sub/two.safetensors"]
    assert registry.taken_ids() == {1: ["loras/one.safetensors"], 2: ["loras/sub/two.safetensors"],
                                    3: ["loras/legacy.safetensors"]}
    legacy = next(e for e in registry.entries() if e.loraid == 3)
    assert legacy.parsed.blocks == (3,) and not legacy.num_blocks_known
    assert legacy.parsed.owned_units() == ((3, "self_attn"), (3, "ffn"))
    assert registry.entries()[0].parsed == one
    assert registry.free_ids(4, 1) == []
    warning = registry.check_before_training(allocate(2, 4, 2))
    assert "two.safetensors" in warning and "legacy.safetensors" in warning


def test_damaged_registry_is_one_clear_error(workspace):
    workspace.loraid_registry.write_text("{not json")
    with pytest.raises(UserError, match="damaged.*--rescan"):
        LoraidRegistry.for_workspace(workspace).taken_ids()
    assert workspace.loraid_registry.read_text() == "{not json"  # nothing the user had is lost


def test_files_outside_the_workspace_keep_absolute_paths(workspace, tmp_path):
    registry = LoraidRegistry.for_workspace(workspace)
    outside = tmp_path / "elsewhere" / "x.safetensors"
    registry.register(outside, allocate_explicit([0, 1], 30, loraid=9))
    assert registry.entries()[0].file == str(outside.resolve())
    assert registry.check_before_training(allocate_explicit([1], 30)).startswith("This block list is already taken")

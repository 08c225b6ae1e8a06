"""The block-map data: every cell's owner against an independent computation, conflicts per transformer."""
from __future__ import annotations

from backend.loraid.allocation import MODULE_GROUPS, allocate, allocate_explicit, allocation_table
from backend.loraid.blockmap import OTHER_KIND, allocation_map, coverage_map, files_map
from backend.loraid.module_names import owned_modules
from backend.models.names import BLOCK_LINEARS


def test_allocation_map_of_40_blocks_per_expert_matches_the_slices():
    block_map = allocation_map(allocation_table(40, 12, "both"))
    assert [panel.expert for panel in block_map.panels] == ["high", "low"]
    assert block_map.owners == ("ID 1", "ID 2", "ID 3", "ID 4")
    for panel in block_map.panels:
        assert panel.kinds == BLOCK_LINEARS and panel.num_blocks == 40
        for block in range(40):
            for kind in BLOCK_LINEARS:
                assert panel.owners_of(block, kind) == (f"ID {block // 12 + 1}",), (panel.expert, block, kind)
        assert panel.conflict_cells() == []
    assert len(block_map.notes) == 1 and "owns 4 blocks (blocks 36-39)" in block_map.notes[0]


def test_allocation_map_with_module_groups_owns_unit_by_unit():
    k = 2
    block_map = allocation_map(allocation_table(8, k, None, module_group_split=True))
    (panel,) = block_map.panels
    assert panel.expert is None and len(block_map.owners) == 12  # 24 units / 2
    for block in range(8):
        for kind in BLOCK_LINEARS:
            unit = 3 * block + MODULE_GROUPS.index(kind.split(".")[0])
            assert panel.owners_of(block, kind) == (f"ID {unit // k + 1}",), (block, kind)


def test_coverage_map_marks_shared_cells_and_names_shared_blocks():
    a, b = allocate(1, 8, 2), allocate(3, 8, 2)  # blocks 0-1, 4-5
    c = allocate_explicit([3, 4, 5], 8, module_groups=["self_attn"])  # self-attention of blocks 3-5
    coverages = {"a.safetensors": owned_modules(a), "b.safetensors": owned_modules(b),
                 "c.safetensors": owned_modules(c)}
    disjoint = coverage_map({k: coverages[k] for k in ("a.safetensors", "b.safetensors")}, {}, 8)
    assert disjoint.conflicts == () and disjoint.conflict_lines() == []
    assert disjoint.panels[0].owners_of(0, "ffn.2") == ("a.safetensors",)
    assert disjoint.panels[0].owners_of(5, "self_attn.q") == ("b.safetensors",)
    assert disjoint.panels[0].owners_of(3, "self_attn.q") == ()

    overlapping = coverage_map(coverages, {}, 8)
    (panel,) = overlapping.panels
    expected = {(block, kind) for block in (4, 5) for kind in BLOCK_LINEARS if kind.startswith("self_attn")}
    assert set(panel.conflict_cells()) == expected
    assert panel.owners_of(4, "self_attn.k") == ("b.safetensors", "c.safetensors")
    assert panel.owners_of(4, "ffn.0") == ("b.safetensors",)
    assert panel.owners_of(3, "self_attn.v") == ("c.safetensors",)
    (line,) = overlapping.conflict_lines()
    assert line.startswith("CONFLICT: b.safetensors and c.safetensors both change blocks 4-5 (modules "
                           "blocks.4.self_attn.q")


def test_block_level_conflict_through_different_module_groups():
    ffn = allocate_explicit([2], 4, module_groups=["ffn"])
    attention = allocate_explicit([2], 4, module_groups=["self_attn", "cross_attn"])
    block_map = coverage_map({"ffn.safetensors": owned_modules(ffn), "attn.safetensors": owned_modules(attention)},
                             {}, 4)
    assert block_map.panels[0].conflict_cells() == []  # no weight is shared ...
    (line,) = block_map.conflict_lines()  # ... but block 2 is shaped by both
    assert "both change block 2 (different modules inside them)" in line


def test_experts_keep_their_own_panels():
    modules = owned_modules(allocate(1, 4, 2))
    block_map = coverage_map({"high.safetensors": modules, "low.safetensors": modules, "any.safetensors": modules},
                             {"high.safetensors": "high", "low.safetensors": "low", "any.safetensors": None},
                             4, experts=("high", "low"))
    high, low = block_map.panels
    assert high.owners_of(0, "self_attn.q") == ("high.safetensors", "any.safetensors")
    assert low.owners_of(0, "self_attn.q") == ("low.safetensors", "any.safetensors")
    assert [(expert, c.first, c.second) for expert, c in block_map.conflicts] == [
        ("high", "high.safetensors", "any.safetensors"), ("low", "low.safetensors", "any.safetensors")]
    assert block_map.conflict_lines()[0].startswith("CONFLICT (high-noise expert): high.safetensors and")


def test_files_map_reads_headers_and_notes_foreign_blocks(tmp_path, kit):
    first, second = allocate(1, 4, 2), allocate(2, 4, 2)
    paths = [kit.save_loraid_file(tmp_path / "first.safetensors", first, owned_modules(first), seed=1),
             kit.save_loraid_file(tmp_path / "second.safetensors", second, [*owned_modules(second), "blocks.6.ffn.0"],
                                  seed=2)]
    block_map = files_map(paths, 4)
    (panel,) = block_map.panels
    assert panel.owners_of(1, "ffn.0") == ("first.safetensors",)
    assert panel.owners_of(3, "cross_attn.o") == ("second.safetensors",)
    assert block_map.conflicts == ()
    assert block_map.notes == ("second.safetensors changes block 6, but this model has blocks 0-3: it was trained on "
                               "another model.",)


def test_modules_outside_the_default_targets_get_their_own_column():
    block_map = coverage_map({"norms.safetensors": ["blocks.1.norm3", "blocks.1.ffn.0"],
                              "head.safetensors": ["head.head"]}, {}, 2)
    (panel,) = block_map.panels
    assert panel.kinds == (*BLOCK_LINEARS, OTHER_KIND)
    assert panel.owners_of(1, OTHER_KIND) == ("norms.safetensors",)
    assert panel.owners_of(1, "ffn.0") == ("norms.safetensors",)
    assert block_map.notes == ("head.safetensors also changes 1 module(s) outside the blocks (head.head).",)

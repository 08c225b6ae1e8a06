"""Allocation from the real block count: every blocks_per_loraid on 30 and 40 blocks, module groups, experts."""
from __future__ import annotations

import math

import pytest

from backend.errors import UserError
from backend.loraid.allocation import (MODULE_GROUPS, Allocation, allocate, allocate_explicit, allocation_table,
                                       default_blocks_per_loraid, max_loraid)


@pytest.mark.parametrize("num_blocks", [30, 40])
def test_every_blocks_per_loraid_gives_disjoint_slices_covering_the_model(num_blocks):
    for k in range(1, num_blocks + 1):
        table = allocation_table(num_blocks, k)
        expected_ids = math.ceil(num_blocks / k)
        assert [a.loraid for a in table] == list(range(1, expected_ids + 1))
        seen: set[int] = set()
        for allocation in table:
            n = allocation.loraid
            assert allocation.blocks == tuple(range((n - 1) * k, min(n * k, num_blocks)))
            assert not seen & set(allocation.blocks), f"k={k}: LORAID {n} overlaps an earlier ID"
            seen |= set(allocation.blocks)
            is_last_partial = n == expected_ids and num_blocks % k != 0
            assert allocation.partial == is_last_partial
            if is_last_partial:
                assert f"owns {num_blocks % k} blocks" in allocation.warning
                assert f"instead of {k}" in allocation.warning
            else:
                assert allocation.warning is None
        assert seen == set(range(num_blocks)), f"k={k}: the slices leave blocks out"
        with pytest.raises(UserError, match=rf"largest valid LORAID is {expected_ids}\b"):
            allocate(expected_ids + 1, num_blocks, k)


def test_forty_blocks_twelve_per_id_example():
    assert [allocate(n, 40, 12).blocks for n in (1, 2, 3)] == [tuple(range(0, 12)), tuple(range(12, 24)),
                                                            tuple(range(24, 36))]
    fourth = allocate(4, 40, 12)
    assert fourth.blocks == (36, 37, 38, 39)
    assert "owns 4 blocks (blocks 36-39) instead of 12" in fourth.warning
    with pytest.raises(UserError) as refused:
        allocate(5, 40, 12)
    assert "largest valid LORAID is 4" in str(refused.value)


@pytest.mark.parametrize("num_blocks", [30, 40])
def test_module_group_units_are_disjoint_and_cover_every_group(num_blocks):
    for k in range(1, 3 * num_blocks + 1, 7):
        table = allocation_table(num_blocks, k, module_group_split=True)
        assert len(table) == math.ceil(3 * num_blocks / k) == max_loraid(num_blocks, k, True)
        owned = [unit for allocation in table for unit in allocation.owned_units()]
        assert len(owned) == len(set(owned)) == 3 * num_blocks
        assert set(owned) == {(b, g) for b in range(num_blocks) for g in MODULE_GROUPS}
    # The documented order: block-major, self_attn, cross_attn, ffn.
    assert allocate(1, num_blocks, 1, module_group_split=True).units == ((0, "self_attn"),)
    assert allocate(3, num_blocks, 1, module_group_split=True).units == ((0, "ffn"),)
    assert allocate(4, num_blocks, 1, module_group_split=True).units == ((1, "self_attn"),)
    assert allocate(2, num_blocks, 2, module_group_split=True).units == ((0, "ffn"), (1, "self_attn"))
    assert max_loraid(num_blocks, 1, True) == 3 * max_loraid(num_blocks, 1)


def test_default_blocks_per_loraid_is_stated_and_never_partial_on_real_models():
    assert default_blocks_per_loraid(30) == default_blocks_per_loraid(40) == 5
    assert max_loraid(30) == 6 and max_loraid(40) == 8
    assert not any(a.partial for n in (30, 40) for a in allocation_table(n))
    assert default_blocks_per_loraid(8) == 2 and max_loraid(8) == 4  # the tiny demo
    assert default_blocks_per_loraid(4) == 1  # musubi's fixture DiT


@pytest.mark.parametrize("bad_k", [0, -1, 41, 2.5])
def test_blocks_per_loraid_outside_the_model_is_refused(bad_k):
    with pytest.raises(UserError, match="from 1 to 40"):
        allocate(1, 40, bad_k)


@pytest.mark.parametrize("bad_id", [0, -3])
def test_ids_start_at_one(bad_id):
    with pytest.raises(UserError, match="from 1 up"):
        allocate(bad_id, 40, 4)


def test_explicit_block_lists_are_checked_against_the_model():
    allocation = allocate_explicit([5, 3, 4, 4], 30, loraid=7)
    assert allocation.blocks == (3, 4, 5) and allocation.scheme == "explicit" and allocation.warning is None
    with pytest.raises(UserError, match=r"Block 30 does not exist: this model has 30 blocks, numbered 0-29"):
        allocate_explicit([29, 30], 30)
    with pytest.raises(UserError, match="empty"):
        allocate_explicit([], 30)
    ffn_only = allocate_explicit([2], 30, module_groups=["ffn"])
    assert ffn_only.owned_units() == ((2, "ffn"),)


def test_experts_both_means_one_file_per_expert_with_the_same_slice():
    both = allocate(3, 40, 4, expert="both")
    assert both.experts == ("high", "low")
    high, low = both.for_expert("high"), both.for_expert("low")
    assert high.blocks == low.blocks == both.blocks == tuple(range(8, 12))
    assert (high.expert, low.expert) == ("high", "low")
    with pytest.raises(UserError):
        high.for_expert("low")
    with pytest.raises(UserError, match="high, low or both"):
        allocate(1, 40, 4, expert="medium")


def test_metadata_round_trip_and_damaged_records():
    for allocation in (allocate(2, 40, 12, "low", model="wan2.2-t2v-a14b"),
                       allocate(5, 30, 2, module_group_split=True), allocate_explicit([1, 9], 30, loraid=4)):
        assert Allocation.from_metadata(allocation.to_metadata()) == allocation
    with pytest.raises(UserError, match="malformed"):
        Allocation.from_metadata({"scheme": "contiguous"})
    record = allocate(2, 40, 12).to_metadata() | {"blocks": [12, 45]}
    with pytest.raises(UserError, match="block 45"):
        Allocation.from_metadata(record)

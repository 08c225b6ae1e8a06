"""The patterns of an allocation select exactly its modules under musubi's rule, in every form a user pastes."""
from __future__ import annotations

import ast
import re
import subprocess

import pytest
from safetensors import safe_open

from backend.adapters.keys import TOP_LEVEL_MODULES, module_name_from_prefix
from backend.adapters.network_args import parse_network_args
from backend.adapters.targets import select_targets
from backend.loraid.allocation import allocate, allocate_explicit, allocation_table
from backend.loraid.module_names import all_block_modules, block_targets, owned_modules
from backend.loraid.patterns import (exclude_regexes, include_regexes, network_args_command_line,
                                     network_args_entries, network_args_toml)


def musubi_selects(names, exclude, include):
    """musubi-tuner's rule, written out independently: fullmatch; skipped if an exclude matches and no include."""
    exclude_re = [re.compile(p) for p in exclude]
    include_re = [re.compile(p) for p in include]
    kept = []
    for name in names:
        excluded = any(p.fullmatch(name) for p in exclude_re)
        included = any(p.fullmatch(name) for p in include_re)
        if not excluded or included:
            kept.append(name)
    return kept


def patterns_from_entries(entries):
    """What musubi does with the pasted `key=value` strings: split on the first '=', ast.literal_eval the value."""
    values = dict(entry.split("=", 1) for entry in entries)
    return ast.literal_eval(values["exclude_patterns"]), ast.literal_eval(values["include_patterns"])


@pytest.mark.parametrize("num_blocks, image_attention", [(30, False), (40, False), (40, True)])
def test_patterns_select_exactly_the_allocation_under_musubis_rule(num_blocks, image_attention):
    targets = block_targets(image_attention)
    candidates = all_block_modules(num_blocks, targets) + list(TOP_LEVEL_MODULES)
    layouts = [(k, False) for k in (1, 3, 4, 5, 7, 12, num_blocks)] + [(k, True) for k in (1, 2, 5)]
    for k, split in layouts:
        for allocation in allocation_table(num_blocks, k, module_group_split=split):
            expected = owned_modules(allocation, targets)
            exclude, include = patterns_from_entries(network_args_entries(allocation))
            assert (exclude, include) == (exclude_regexes(allocation), include_regexes(allocation))
            assert musubi_selects(candidates, exclude, include) == expected, (k, split, allocation.loraid)
            assert select_targets(candidates, exclude, include) == expected


def test_explicit_lists_and_module_groups():
    allocation = allocate_explicit([4, 9], 30, module_groups=["ffn", "self_attn"])
    assert include_regexes(allocation) == [r"blocks\.(4|9)\.(self_attn|ffn)\..*"]
    selected = musubi_selects(all_block_modules(30), *patterns_from_entries(network_args_entries(allocation)))
    assert selected == ["blocks.4.self_attn.q", "blocks.4.self_attn.k", "blocks.4.self_attn.v", "blocks.4.self_attn.o",
                        "blocks.4.ffn.0", "blocks.4.ffn.2", "blocks.9.self_attn.q", "blocks.9.self_attn.k",
                        "blocks.9.self_attn.v", "blocks.9.self_attn.o", "blocks.9.ffn.0", "blocks.9.ffn.2"]


def test_our_network_args_parser_reads_the_entries_and_the_toml():
    allocation = allocate(2, 40, 4)
    args = parse_network_args(network_args_entries(allocation))
    assert args.exclude_patterns == (".*",)
    assert args.include_patterns == (r"blocks\.(4|5|6|7)\..*",)
    assert parse_network_args(network_args_toml(allocation)) == args


def test_the_fixture_slice_is_what_our_patterns_give(musubi_dir):
    """musubi wrote lora_blocks_0_1 with include `blocks\\.(0|1)\\..*`: ours is the same, and selects its modules."""
    allocation = allocate(1, 4, 2)
    assert include_regexes(allocation) == [r"blocks\.(0|1)\..*"]

    def modules(file):
        with safe_open(str(musubi_dir / file), framework="pt") as handle:
            return sorted({module_name_from_prefix(key.split(".", 1)[0]) for key in handle.keys()})

    full, sliced = modules("lora_full.safetensors"), modules("lora_blocks_0_1.safetensors")
    exclude, include = patterns_from_entries(network_args_entries(allocation))
    assert sorted(musubi_selects(full, exclude, include)) == sliced == sorted(owned_modules(allocation))


def test_the_command_line_survives_bash_quoting():
    allocation = allocate(3, 30, 5, module_group_split=True)
    command = network_args_command_line(allocation)
    assert command.startswith("--network_args ")
    words = subprocess.run(["/bin/bash", "-c", "printf '%s\\n' " + command.removeprefix("--network_args ")],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert words == network_args_entries(allocation)

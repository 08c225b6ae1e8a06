"""The include / exclude patterns that restrict training to one allocation, for this app and for musubi-tuner.

musubi's rule (and ours, `backend.adapters.targets.select_targets`): `re.fullmatch` on the dotted original Wan name;
a module is skipped when it matches an exclude pattern and no include pattern. So a slice is
`exclude_patterns=['.*']` plus `include_patterns=[...]` naming its blocks, in the style of musubi's own
`blocks\\.(0|1)\\..*`; module-group allocations add the groups: `blocks\\.(4|5)\\.(self_attn|ffn)\\..*`.

The `key=value` entries write each regex as a raw Python literal (`r'blocks\\.(0|1)\\..*'`): both tools read the
value with `ast.literal_eval`, and the backslashes survive bash, PowerShell and cmd double quotes unchanged.
"""
from __future__ import annotations

import json

from backend.loraid.allocation import MODULE_GROUPS, Allocation

EXCLUDE_ALL = ".*"


def _alternation(items) -> str:
    """`(4|5)` for several items, `4` for one."""
    items = [str(item) for item in items]
    return items[0] if len(items) == 1 else "(" + "|".join(items) + ")"


def include_regexes(allocation: Allocation) -> list[str]:
    """Regexes that fullmatch exactly the allocation's modules (inside its blocks and groups)."""
    by_groups: dict[tuple[str, ...], list[int]] = {}
    for block in allocation.blocks:
        by_groups.setdefault(allocation.groups_of(block), []).append(block)
    patterns = []
    for groups, blocks in sorted(by_groups.items(), key=lambda item: item[1][0]):
        block_part = rf"blocks\.{_alternation(blocks)}\."
        if tuple(groups) == MODULE_GROUPS:
            patterns.append(block_part + ".*")
        else:
            patterns.append(block_part + rf"{_alternation(groups)}\..*")
    return patterns


def exclude_regexes(allocation: Allocation) -> list[str]:
    return [EXCLUDE_ALL]


def _raw_literal_list(patterns: list[str]) -> str:
    """['.*'] / [r'blocks\\.(0|1)\\..*']: a Python list literal; raw strings wherever a backslash occurs."""
    items = []
    for pattern in patterns:
        if "'" in pattern or pattern.endswith("\\"):
            items.append(repr(pattern))
        else:
            items.append(f"r'{pattern}'" if "\\" in pattern else f"'{pattern}'")
    return "[" + ", ".join(items) + "]"


def network_args_entries(allocation: Allocation) -> list[str]:
    """The `key=value` entries a user pastes into `--network_args` (this app or musubi-tuner)."""
    return [f"exclude_patterns={_raw_literal_list(exclude_regexes(allocation))}",
            f"include_patterns={_raw_literal_list(include_regexes(allocation))}"]


def network_args_command_line(allocation: Allocation) -> str:
    """`--network_args "exclude_patterns=['.*']" "include_patterns=[r'blocks\\.(0|1)\\..*']"` (any shell)."""
    return "--network_args " + " ".join(f'"{entry}"' for entry in network_args_entries(allocation))


def network_args_toml(allocation: Allocation) -> str:
    """`network_args = ["exclude_patterns=['.*']", "include_patterns=[r'blocks\\\\.(0|1)\\\\..*']"]` (valid TOML)."""
    return "network_args = [" + ", ".join(json.dumps(entry) for entry in network_args_entries(allocation)) + "]"

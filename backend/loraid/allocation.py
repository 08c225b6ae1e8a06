"""Which part of a Wan model a LORAID owns: computed from the model's real block count, never assumed.

Contiguous scheme: LORAID n owns blocks [(n-1)·k, n·k) of a model with N blocks, k = `blocks_per_loraid` (any value
1..N). The last slice may be partial (N not a multiple of k): allowed, with a warning stating its size. An ID past
the last slice owns nothing and is refused with the largest valid ID.

Default k (`default_blocks_per_loraid`): 5 on real Wan models (it divides both 30 and 40, so no slice is partial:
6 IDs on the 30-block 1.3B / 5B, 8 per expert on the 40-block 14B / A14B); models of fewer than 20 blocks (the
tiny demo's 8, musubi's 4-block fixture) get N // 4 (at least 1), so 4 or more IDs fit there too.

Module-group scheme (finer units): each block splits into three groups in this order — self_attn (q, k, v, o),
cross_attn (q, k, v, o and, on Wan2.1 I2V, k_img / v_img), ffn (ffn.0, ffn.2). Units are numbered block-major:
unit u = 3·block + group index (block 0 self_attn = 0, block 0 cross_attn = 1, block 0 ffn = 2, block 1 self_attn
= 3, ...), and LORAID n owns units [(n-1)·k, n·k), k counted in module groups, so 3x more IDs fit at the same k.

Explicit scheme: a block list the user gives (checked against N); the ID, if any, is only a label.

Wan2.2 A14B: each expert has its own N blocks. `expert` is high, low or both; "both" means the same slice in each
expert, saved as one file per expert (`Allocation.for_expert`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from backend.errors import UserError

SCHEMES = ("contiguous", "explicit", "module_group")
MODULE_GROUPS = ("self_attn", "cross_attn", "ffn")
EXPERT_CHOICES = ("high", "low", "both")
REAL_MODEL_BLOCKS_PER_LORAID = 5
SMALL_MODEL_BLOCKS = 20

Unit = tuple[int, str]  # (block, module group)


def default_blocks_per_loraid(num_blocks: int) -> int:
    """5 for real Wan models (30 or 40 blocks); N // 4 (at least 1) for models of fewer than 20 blocks."""
    _check_num_blocks(num_blocks)
    if num_blocks >= SMALL_MODEL_BLOCKS:
        return REAL_MODEL_BLOCKS_PER_LORAID
    return max(1, num_blocks // 4)


@dataclass(frozen=True)
class Allocation:
    """The blocks (and, for the module-group scheme, the groups inside them) that one LoRA file may change."""

    scheme: str  # contiguous | explicit | module_group
    loraid: int | None  # None only for an unlabelled explicit block list
    blocks: tuple[int, ...]  # sorted, distinct
    num_blocks: int  # the model's block count (per expert)
    expert: str | None = None  # high | low | both | None (a single-transformer model)
    blocks_per_loraid: int | None = None  # k; for module_group it counts module groups
    units: tuple[Unit, ...] | None = None  # (block, group) pairs for the module_group scheme, else None
    model: str | None = None  # model kind name (e.g. wan2.1-t2v-14b) when known

    @property
    def experts(self) -> tuple[str | None, ...]:
        """The expert transformers this allocation touches: ("high", "low") for both, (None,) for single models."""
        return ("high", "low") if self.expert == "both" else (self.expert,)

    @property
    def unit_count(self) -> int:
        return len(self.units) if self.units is not None else len(self.blocks)

    @property
    def partial(self) -> bool:
        return self.blocks_per_loraid is not None and self.unit_count < self.blocks_per_loraid

    @property
    def warning(self) -> str | None:
        """The partial-slice warning, stating its size; None for a full slice or an explicit list."""
        if self.scheme == "explicit" or not self.partial:
            return None
        unit = "module groups" if self.scheme == "module_group" else "blocks"
        total = self.num_blocks * (len(MODULE_GROUPS) if self.scheme == "module_group" else 1)
        return (f"LORAID {self.loraid} is the last, partial slice: it owns {self.unit_count} {unit} "
                f"({describe_units(self)}) instead of {self.blocks_per_loraid}, because {total} {unit} are not a "
                f"multiple of {self.blocks_per_loraid}.")

    def groups_of(self, block: int) -> tuple[str, ...]:
        """The module groups this allocation owns inside `block` (all three for whole-block schemes)."""
        if block not in self.blocks:
            return ()
        if self.units is None:
            return MODULE_GROUPS
        return tuple(group for b, group in self.units if b == block)

    def owned_units(self) -> tuple[Unit, ...]:
        """Every (block, group) pair owned, block-major."""
        return tuple((block, group) for block in self.blocks for group in self.groups_of(block))

    def for_expert(self, expert: str) -> "Allocation":
        """The allocation of one expert's file ("both" saves one file per expert, each recording its own expert)."""
        if expert not in self.experts or expert is None:
            raise UserError(f"This allocation covers the {self.expert or 'single'} transformer, not the {expert} "
                            f"expert; pick one of: {', '.join(e for e in self.experts if e)}.")
        return replace(self, expert=expert)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready dict for the `loraid_allocation` header key (`metadata.build_metadata(allocation=...)`)."""
        data: dict[str, Any] = {"scheme": self.scheme, "loraid": self.loraid, "blocks": list(self.blocks),
                                "num_blocks": self.num_blocks, "expert": self.expert,
                                "blocks_per_loraid": self.blocks_per_loraid, "model": self.model}
        if self.units is not None:
            data["units"] = [f"{block}.{group}" for block, group in self.units]
        return data

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any], loraid: int | None = None) -> "Allocation":
        """Read back `to_metadata`; a malformed record is a UserError (the file's header was edited or damaged)."""
        try:
            units = None
            if data.get("units") is not None:
                units = tuple(_parse_unit(text) for text in data["units"])
            allocation = cls(
                scheme=str(data["scheme"]), loraid=_optional_int(data.get("loraid", loraid)),
                blocks=tuple(sorted({int(b) for b in data["blocks"]})), num_blocks=int(data["num_blocks"]),
                expert=data.get("expert"), blocks_per_loraid=_optional_int(data.get("blocks_per_loraid")),
                units=units, model=data.get("model"))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"The LORAID allocation record {dict(data)} is malformed ({exc}); re-save the file with "
                            f"its allocation or pass the blocks explicitly.") from None
        _validate_record(allocation)
        return allocation


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _parse_unit(text: str) -> Unit:
    block, _, group = str(text).partition(".")
    if group not in MODULE_GROUPS:
        raise ValueError(f"unit `{text}` is not `<block>.<{'|'.join(MODULE_GROUPS)}>`")
    return int(block), group


def _validate_record(allocation: Allocation) -> None:
    if allocation.scheme not in SCHEMES:
        raise UserError(f"Unknown LORAID scheme `{allocation.scheme}`; expected one of {', '.join(SCHEMES)}.")
    _check_num_blocks(allocation.num_blocks)
    _check_expert(allocation.expert)
    bad = [b for b in allocation.blocks if not 0 <= b < allocation.num_blocks]
    if bad:
        raise UserError(f"The LORAID allocation names block {bad[0]}, but the model has blocks 0-"
                        f"{allocation.num_blocks - 1}; the file belongs to another model.")


def _check_num_blocks(num_blocks: int) -> None:
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise UserError(f"The model block count must be a positive whole number, got {num_blocks!r}.")


def _check_expert(expert: str | None) -> None:
    if expert is not None and expert not in EXPERT_CHOICES:
        raise UserError(f"Unknown expert `{expert}`; choose high, low or both (Wan2.2 A14B), "
                        f"or leave it unset for a single-transformer model.")


def total_units(num_blocks: int, module_group_split: bool = False) -> int:
    return num_blocks * (len(MODULE_GROUPS) if module_group_split else 1)


def _resolve_k(num_blocks: int, blocks_per_loraid: int | None, module_group_split: bool) -> int:
    _check_num_blocks(num_blocks)
    k = default_blocks_per_loraid(num_blocks) if blocks_per_loraid is None else blocks_per_loraid
    limit = total_units(num_blocks, module_group_split)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
        unit = "module groups" if module_group_split else "blocks"
        raise UserError(f"blocks_per_loraid must be a whole number from 1 to {limit} (the model's {limit} {unit}), "
                        f"got {k!r}.")
    return k


def max_loraid(num_blocks: int, blocks_per_loraid: int | None = None, module_group_split: bool = False) -> int:
    """The largest LORAID that owns at least one unit: ceil(units / k)."""
    k = _resolve_k(num_blocks, blocks_per_loraid, module_group_split)
    return math.ceil(total_units(num_blocks, module_group_split) / k)


def allocate(loraid: int, num_blocks: int, blocks_per_loraid: int | None = None, expert: str | None = None,
             module_group_split: bool = False, model: str | None = None) -> Allocation:
    """The slice LORAID `loraid` owns (see the module docstring); check `.warning` for a partial last slice."""
    _check_expert(expert)
    k = _resolve_k(num_blocks, blocks_per_loraid, module_group_split)
    if isinstance(loraid, bool) or not isinstance(loraid, int) or loraid < 1:
        raise UserError(f"A LORAID is a whole number from 1 up, got {loraid!r}.")
    largest = max_loraid(num_blocks, k, module_group_split)
    if loraid > largest:
        unit = "module groups" if module_group_split else "blocks"
        raise UserError(f"LORAID {loraid} would own no block: {total_units(num_blocks, module_group_split)} {unit} at "
                        f"{k} per ID give IDs 1-{largest}, so the largest valid LORAID is {largest} "
                        f"(lower blocks_per_loraid to fit more IDs).")
    start, stop = (loraid - 1) * k, min(loraid * k, total_units(num_blocks, module_group_split))
    if not module_group_split:
        return Allocation("contiguous", loraid, tuple(range(start, stop)), num_blocks, expert, k, None, model)
    units = tuple((u // len(MODULE_GROUPS), MODULE_GROUPS[u % len(MODULE_GROUPS)]) for u in range(start, stop))
    blocks = tuple(sorted({block for block, _ in units}))
    return Allocation("module_group", loraid, blocks, num_blocks, expert, k, units, model)


def allocate_explicit(blocks: Iterable[int], num_blocks: int, loraid: int | None = None, expert: str | None = None,
                      module_groups: Iterable[str] | None = None, model: str | None = None) -> Allocation:
    """An explicit block list (optionally only some module groups of those blocks), checked against the model."""
    _check_num_blocks(num_blocks)
    _check_expert(expert)
    if loraid is not None and (isinstance(loraid, bool) or not isinstance(loraid, int) or loraid < 1):
        raise UserError(f"A LORAID is a whole number from 1 up, got {loraid!r}.")
    chosen = sorted(set(blocks))
    if not chosen:
        raise UserError("The explicit block list is empty; name at least one block, e.g. `0-3` or `0 1 2 3`.")
    bad = [b for b in chosen if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < num_blocks]
    if bad:
        raise UserError(f"Block {bad[0]} does not exist: this model has {num_blocks} blocks, numbered 0-"
                        f"{num_blocks - 1}.")
    units = None
    if module_groups is not None:
        groups = list(dict.fromkeys(module_groups))
        unknown = [g for g in groups if g not in MODULE_GROUPS]
        if unknown or not groups:
            raise UserError(f"Unknown module group `{unknown[0] if unknown else ''}`; choose from "
                            f"{', '.join(MODULE_GROUPS)}.")
        ordered = [g for g in MODULE_GROUPS if g in groups]
        units = tuple((block, group) for block in chosen for group in ordered) if len(ordered) < 3 else None
    return Allocation("explicit", loraid, tuple(chosen), num_blocks, expert, None, units, model)


def allocation_table(num_blocks: int, blocks_per_loraid: int | None = None, expert: str | None = None,
                     module_group_split: bool = False, model: str | None = None) -> list[Allocation]:
    """The allocation of every valid ID, 1..max_loraid."""
    largest = max_loraid(num_blocks, blocks_per_loraid, module_group_split)
    return [allocate(n, num_blocks, blocks_per_loraid, expert, module_group_split, model)
            for n in range(1, largest + 1)]


def compact_ranges(numbers: Iterable[int]) -> str:
    """[0, 1, 2, 3, 8] -> "0-3, 8"."""
    runs: list[list[int]] = []
    for value in sorted(set(numbers)):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def describe_units(allocation: Allocation) -> str:
    """"blocks 0-3" or "block 0 ffn, block 1 self_attn+cross_attn" — what a person reads in a table."""
    if allocation.units is None:
        word = "block" if len(allocation.blocks) == 1 else "blocks"
        return f"{word} {compact_ranges(allocation.blocks)}"
    parts = []
    for block in allocation.blocks:
        groups = allocation.groups_of(block)
        parts.append(f"block {block}" if len(groups) == len(MODULE_GROUPS) else f"block {block} {'+'.join(groups)}")
    return ", ".join(parts)

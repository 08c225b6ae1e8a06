"""The allocation controls checked at once (model, blocks per LORAID, rank, the chosen ID), each wrong value with
its own sentence, worded for where it is shown: the LORAID tab names a field by its label and shows the sentence
beside it; `python -m backend blockmap` names the flag.

`AllocationValues.check` returns what the values give (the model's facts, k, rank, the ID) and {field: sentence}
for the wrong ones; a field that depends on a wrong one (the ID on k, k on the model) is not judged."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from backend.errors import UserError
from backend.loraid.allocation import default_blocks_per_loraid, total_units
from backend.loraid.model_facts import ModelFacts, facts_for

LABELS = {"model": "Model", "blocks_per_loraid": "Blocks per LORAID (blocks_per_loraid)",
          "rank": "Rank (capacity)", "loraid": "LORAID"}
NameOf = Callable[[str], str]


def form_label(name: str) -> str:
    """A control as the LORAID tab shows it: its label."""
    return LABELS[name]


def _whole(value: Any, what: str) -> tuple[int | None, str | None]:
    """(the whole number, None) or (None, the sentence saying why `value` is not one)."""
    if value is None or value == "":
        return None, f"{what} is empty; enter a whole number."
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"{what} is {value!r}, not a whole number; enter a whole number."
    if value != int(value):
        return None, f"{what} is {value!r}, not a whole number; enter a whole number such as {max(1, int(value))}."
    return int(value), None


@dataclass(frozen=True)
class CheckedAllocation:
    facts: ModelFacts | None
    blocks_per_loraid: int | None
    rank: int | None
    loraid: int | None
    problems: dict[str, str]


@dataclass(frozen=True)
class AllocationValues:
    """The controls as given: `blocks_per_loraid` None means the model's default; `loraid` None means none chosen."""
    model: str | None
    blocks_per_loraid: Any
    module_group_split: bool
    rank: Any
    loraid: Any = None

    def check(self, name_of: NameOf = form_label) -> CheckedAllocation:
        problems: dict[str, str] = {}
        facts = k = rank = loraid = None
        if not self.model:
            problems["model"] = (f"{name_of('model')} is empty; pick a demo model, a model type, or enter a "
                                 f"checkpoint path.")
        else:
            try:
                facts = facts_for(self.model)
            except UserError as exc:
                problems["model"] = str(exc)
        rank, problem = _whole(self.rank, name_of("rank"))
        if problem is None and rank < 1:
            rank, problem = None, f"{name_of('rank')} is {rank}; it must be at least 1."
        if problem:
            problems["rank"] = problem
        if facts is None:
            return CheckedAllocation(None, None, rank, None, problems)
        unit = "module groups" if self.module_group_split else "blocks"
        limit = total_units(facts.num_blocks, self.module_group_split)
        if self.blocks_per_loraid is None or self.blocks_per_loraid == "":
            k = default_blocks_per_loraid(facts.num_blocks)
        else:
            k, problem = _whole(self.blocks_per_loraid, name_of("blocks_per_loraid"))
            if problem is None and not 1 <= k <= limit:
                k, problem = None, (f"{name_of('blocks_per_loraid')} is {self.blocks_per_loraid}; it must be from 1 "
                                    f"to {limit} ({facts.label} has {limit} {unit}).")
            if problem:
                problems["blocks_per_loraid"] = problem
        if k is not None and self.loraid not in (None, ""):
            loraid, problem = _whole(self.loraid, name_of("loraid"))
            largest = math.ceil(limit / k)
            if problem is None and not 1 <= loraid <= largest:
                loraid, problem = None, (f"{name_of('loraid')} {self.loraid} owns no block: {limit} {unit} at {k} "
                                         f"per ID give IDs 1-{largest}; pick one of them or lower "
                                         f"{name_of('blocks_per_loraid')}.")
            if problem:
                problems["loraid"] = problem
        return CheckedAllocation(facts, k, rank, loraid, problems)

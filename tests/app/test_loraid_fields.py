"""The LORAID tab's allocation controls: each wrong value says its one sentence beside its own field (the backend's
check, in the page's labels), what depends on it is cleared rather than left stale, and the sentence goes once the
value is fixed. The ID picker counts a slice's owners when several hold it; the capacity table lists them all."""
from __future__ import annotations

import pytest

from backend.jobs import JobManager
from backend.loraid.registry import LoraidRegistry
from backend.models.demo import build_demo_workspace
from backend.models.loading import load_transformer
from tests.demo_files import save_demo_lora
from ui.context import AppContext
from ui.tabs.loraid import ALLOCATION_FIELDS, LoraidPanel


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_demo_workspace(tmp_path_factory.mktemp("loraid-fields") / "ws", seed=0)


@pytest.fixture
def panel(workspace):
    return LoraidPanel(AppContext(workspace, JobManager(workspace.jobs)))


def shown(panel, workspace, k=2, rank=4, loraid=None, model=None):
    grid, rows, message, picker, network_args, cli, *slots = panel.allocation(
        str(workspace.demo_t2v) if model is None else model, k, None, False, rank, loraid)
    problems = {name: slot["value"] for name, slot in zip(ALLOCATION_FIELDS, slots) if slot["visible"]}
    assert all(not slot["visible"] and slot["value"] == "" for slot in slots
               if slot["value"] not in problems.values())  # a fixed field's slot is emptied and hidden
    return dict(grid=grid, rows=rows, message=message, picker=picker, args=network_args, cli=cli), problems


def test_each_wrong_value_is_said_beside_its_field_and_cleared_when_fixed(panel, workspace):
    good, problems = shown(panel, workspace, k=2, rank=4, loraid=3)
    assert problems == {}
    assert good["picker"]["value"] == 3 and "--loraid 3 --blocks_per_loraid 2" in good["cli"]
    assert len(good["rows"]) == 4 and "IDs 1–4" in good["message"] and good["grid"]

    page, problems = shown(panel, workspace, k=2.5, rank=4, loraid=3)  # not rounded to 2 behind the user's back
    assert problems == {"blocks_per_loraid": "⚠ Blocks per LORAID (blocks_per_loraid) is 2.5, not a whole number; "
                                             "enter a whole number such as 2."}
    assert page["grid"] == "" and page["rows"] == [] and page["args"] == page["cli"] == "" and page["message"] == ""

    page, problems = shown(panel, workspace, k=9, rank=4, loraid=3)
    assert list(problems) == ["blocks_per_loraid"]
    sentence = problems["blocks_per_loraid"]
    assert sentence.startswith("⚠ Blocks per LORAID (blocks_per_loraid) is 9; it must be from 1 to 8 (")
    assert sentence.endswith(" has 8 blocks).")

    page, problems = shown(panel, workspace, k=2, rank=0, loraid=3)
    assert problems == {"rank": "⚠ Rank (capacity) is 0; it must be at least 1."}
    assert page["rows"] == []  # the capacities of the old rank do not stand beside the error
    assert page["grid"] and "--loraid 3" in page["cli"]  # what the rank does not change still shows

    page, problems = shown(panel, workspace, k=3, rank=4, loraid=4)  # 8 blocks at 3 per ID: IDs 1-3
    assert problems == {"loraid": "⚠ LORAID 4 owns no block: 8 blocks at 3 per ID give IDs 1-3; pick one of them "
                                  "or lower Blocks per LORAID (blocks_per_loraid)."}
    assert page["args"] == page["cli"] == ""  # no pattern of another ID passed off as ID 4's
    assert page["picker"]["value"] == 4 and page["picker"]["choices"][-1] == ("4 (owns no block)", 4)
    assert [value for _, value in page["picker"]["choices"][:-1]] == [1, 2, 3] and len(page["rows"]) == 3

    page, problems = shown(panel, workspace, k=3, rank=4, loraid=2)  # fixed: every slot hides again
    assert problems == {} and "--loraid 2 --blocks_per_loraid 3" in page["cli"]

    page, problems = shown(panel, workspace, model="no-such-model", rank=-1)  # two wrong fields, two sentences
    assert set(problems) == {"model", "rank"} and "no-such-model" in problems["model"]
    assert problems["rank"] == "⚠ Rank (capacity) is -1; it must be at least 1."
    assert page["grid"] == "" and page["rows"] == [] and page["cli"] == ""


def test_a_crowded_slice_is_counted_in_the_picker_and_listed_in_the_capacity_table(panel, workspace):
    model = load_transformer(workspace.demo_t2v)
    names = [f"a-rather-long-concept-name-number-{n}.safetensors" for n in range(3)]
    for seed, name in enumerate(names):
        save_demo_lora(model, workspace.loras / name, loraid=2, blocks_per_loraid=2, seed=seed)
    LoraidRegistry.for_workspace(workspace).scan(workspace.loras)
    try:
        page, problems = shown(panel, workspace, k=2, rank=4, loraid=1)
        labels = dict((value, label) for label, value in page["picker"]["choices"])
        assert labels[2] == "2 (taken by 3: see the capacity table)" and labels[1] == "1"
        owners = {row[0]: row[-1] for row in page["rows"]}
        assert sorted(owners["2"].split(", ")) == names  # nothing lost: every owner is in the table
    finally:
        for name in names:
            (workspace.loras / name).unlink()
        LoraidRegistry.for_workspace(workspace).scan(workspace.loras)

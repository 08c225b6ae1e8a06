"""The sentences a tab shows name its fields as the form does ("Rank (rank)"), never a command-line flag: each case
below drives the code path a tab reaches (a job's `error:` line as the Merge / EMA / Train tabs read it, the Generate
tab's LoRA-MoE picker, the LORAID tab's allocation check) to its refusal and looks for `--` in what the page shows.
Messages only the command line can reach keep their flags."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.__main__ import main
from backend.compose.ema import post_hoc_ema
from backend.errors import UserError
from backend.generate.options import MoeOptions, moe_file_problems
from backend.loraid.allocation_fields import AllocationValues
from backend.moe.merge_stage1 import Stage1Merge, merge_stage1
from backend.moe.route import boundary_of
from backend.workspace import Workspace
from ui.merge_ema_common import failure_sentence

FIRST_HALF = [r"exclude_patterns=['blocks\.[23]\..*']"]


def refusal(action) -> str:
    with pytest.raises(UserError) as caught:
        action()
    return str(caught.value)


def assert_page_words(sentence: str, *labels: str) -> None:
    assert sentence and "--" not in sentence, sentence
    for label in labels:
        assert label in sentence, sentence


@pytest.fixture(scope="module")
def files(tmp_path_factory, kit):
    folder = tmp_path_factory.mktemp("no-flags")
    model = kit.make_tiny_wan()
    loha = kit.save_network(kit.make_network(model, ["algo=loha", r"exclude_patterns=['blocks\.[01]\..*']"]),
                            folder / "h.safetensors")
    loha_later = kit.save_network(kit.make_network(model, ["algo=loha", r"exclude_patterns=['blocks\.[01]\..*']"],
                                                   seed=4), folder / "h2.safetensors")
    plain = kit.save_network(kit.make_network(model, FIRST_HALF), folder / "p.safetensors")
    return SimpleNamespace(folder=folder, loha=loha, loha_later=loha_later, plain=plain)


def test_a_lora_merge_job_that_needs_a_rank_names_the_merge_tabs_field(files, capsys):
    out = files.folder / "merged.safetensors"
    assert main(["merge-loras", "--lora", str(files.plain), str(files.loha), "--out", str(out)]) != 0
    shown = failure_sentence(capsys.readouterr().err)  # what the Merge tab's status says of the failed job
    assert_page_words(shown, "h.safetensors is a loha file", "set Rank (rank) to merge by SVD")
    assert not out.exists()


def test_an_ema_in_delta_space_of_loha_files_names_the_ema_tabs_field(files):
    shown = refusal(lambda: post_hoc_ema([files.loha, files.loha_later], files.folder / "ema.safetensors", uniform=True,
                                         space="delta"))
    assert_page_words(shown, "set Averaging space to factors")


def test_the_generate_tabs_moe_picker_sends_a_plain_lora_to_the_lora_field(files):
    shown = moe_file_problems(MoeOptions(moe=str(files.plain)))["moe"]  # beside the picker's file field
    assert_page_words(shown, "is not a LoRA-MoE file", "among the LoRA files (lora)")


def test_a_moe_file_without_a_boundary_names_the_generate_field():
    moe = SimpleNamespace(labels=["high", "low"], header={"model_kind": "someone-elses"}, path=Path("x.safetensors"))
    assert_page_words(refusal(lambda: boundary_of(moe, None)), "Expert switch point (boundary_ratio)")


def test_the_train_tabs_moe_merge_step_words_its_refusals_for_the_page(tmp_path):
    dit = tmp_path / "dit.safetensors"
    dit.write_bytes(b"")
    same = Stage1Merge(lora=tmp_path / "s1.safetensors", out_dir=tmp_path, dit=dit, dit_high_noise=dit)
    assert_page_words(refusal(same.plan), "same file")
    onto_itself = Stage1Merge(lora=tmp_path / "dit.safetensors", out_dir=tmp_path, dit=dit)
    assert_page_words(refusal(lambda: merge_stage1(onto_itself)), "choose another output folder or name")


def test_moe_stage_2_without_a_dataset_names_the_field(tmp_path):
    from backend.moe.settings import MoeTrainSettings
    from backend.moe.train import train_moe

    settings = MoeTrainSettings(model_kind="demo-a14b", expert="both", output_dir=str(tmp_path), dataset_config="")
    assert_page_words(refusal(lambda: train_moe(settings, None, log=lambda *_: None)),
                      "Dataset TOML (dataset_config)")


def test_a_loraid_missing_from_the_registry_names_the_generate_field(tmp_path):
    from backend.generate.loras import pick_loras

    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    shown = refusal(lambda: pick_loras([], [7], None, ws.root))
    assert_page_words(shown, "LORAID 7 is not in the workspace registry", "LoRA files (lora)")


@pytest.mark.parametrize("values", [
    dict(model="no-such-model", blocks_per_loraid=2, module_group_split=False, rank=4),
    dict(model="wan2.1-t2v-1.3b", blocks_per_loraid=31, module_group_split=False, rank=0),
    dict(model="wan2.1-t2v-1.3b", blocks_per_loraid=2.5, module_group_split=True, rank=4),
    dict(model="wan2.1-t2v-1.3b", blocks_per_loraid=10, module_group_split=False, rank=4, loraid=4),
])
def test_the_loraid_tabs_allocation_checks_name_its_fields(values):
    problems = AllocationValues(**values).check().problems
    assert problems
    for sentence in problems.values():
        assert_page_words(sentence)

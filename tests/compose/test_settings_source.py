"""The merge, merge-loras and EMA options are declared once, in MergeSettings / MergeLorasSettings / EmaSettings: the
`merge` / `merge-loras` / `ema` command lines, the Merge and EMA tabs' widgets and the argv of the jobs those tabs
start all come from their fields, and a field added to a settings model appears in all three."""
from __future__ import annotations

import argparse
from pathlib import Path

import gradio as gr
import pytest

from backend.__main__ import main
from backend.compose import ema_cli, merge_cli, merge_loras_cli
from backend.compose.merge_plan import Pick
from backend.compose.merge_request import DitMerge, LoraMerge
from backend.compose.settings import EmaSettings, MergeLorasSettings, MergeSettings, ema_from_flags
from backend.config.settings import add_setting_arguments, setting
from backend.errors import UserError
from backend.jobs import JobManager
from backend.workspace import Workspace
from ui.context import AppContext
from ui.merge_ema_common import shown
from ui.tabs import ema as ema_tab
from ui.tabs import merge as merge_tab

CLIS = {MergeSettings: merge_cli, MergeLorasSettings: merge_loras_cli, EmaSettings: ema_cli}
# absent on the command line, these mean "follow the values given": --beta alone picks the beta rule
EMA_RULE_FLAGS = {"rule", "sigma_rel", "beta"}
# the form's widget of each option (the LoRA files, strengths and the run's checkpoints come from the tabs' tables
# and pickers; a pair's high-noise files and output are made from the table's expert column and the output name)
MERGE_WIDGETS = {"dit": "merge-base", "dit_high_noise": "merge-base-high", "out": "merge-out",
                 "device": "merge-device", "dtype": "merge-dtype", "allow_overlap": "merge-allow-overlap",
                 "overwrite": "merge-overwrite"}
MERGE_LORAS_WIDGETS = {"out": "merge-out", "rank": "merge-rank", "precision": "merge-precision",
                       "allow_overlap": "merge-allow-overlap", "overwrite": "merge-overwrite"}
EMA_WIDGETS = {"out": "ema-out", "rule": "ema-rule", "sigma_rel": "ema-sigma-rel", "beta": "ema-beta",
               "beta2": "ema-beta2", "space": "ema-space", "precision": "ema-precision", "overwrite": "ema-overwrite"}
FROM_TABLES = {MergeSettings: {"lora", "multiplier", "lora_high_noise", "multiplier_high_noise", "out_high_noise"},
               MergeLorasSettings: {"lora", "multiplier"}, EmaSettings: {"inputs"}}


def _parser(cli) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser


def _page(tmp_path: Path, build) -> dict:
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    with gr.Blocks() as page:
        with gr.Tab("tab") as tab:
            build(AppContext(ws, JobManager(ws.jobs)), tab)
    return {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}


def test_each_model_lists_its_jobs_options_with_what_a_form_needs():
    assert list(MergeSettings.model_fields) == ["dit", "lora", "multiplier", "out", "dit_high_noise",
                                                "lora_high_noise", "multiplier_high_noise", "out_high_noise",
                                                "device", "dtype", "allow_overlap", "overwrite"]
    assert list(MergeLorasSettings.model_fields) == ["lora", "multiplier", "out", "rank", "precision",
                                                     "allow_overlap", "overwrite"]
    assert list(EmaSettings.model_fields) == ["inputs", "out", "rule", "sigma_rel", "beta", "beta2", "space",
                                              "precision", "overwrite"]
    for model in CLIS:
        for name, info in model.field_info().items():
            assert info["label"] and info["help"] and info["group"], (model.__name__, name)
    assert EmaSettings.field_info()["rule"]["choices"] == ["power", "beta", "uniform"]
    assert MergeSettings.field_info()["dtype"]["choices"] == ["same", "fp32", "bf16", "fp16"]


@pytest.mark.parametrize("model", list(CLIS), ids=lambda model: model.__name__)
def test_the_command_line_takes_its_flags_help_choices_and_defaults_from_the_model(model):
    actions = {}
    for action in _parser(CLIS[model])._actions:
        actions.setdefault(action.dest, action)  # `--uniform` (a shorthand for `--rule uniform`) comes after --rule
    for name, info in model.field_info().items():
        action = actions[name]
        assert action.help.replace("%%", "%") == info["help"], name
        if name == "inputs":
            assert action.option_strings == [] and action.nargs == "+"  # the run folder or files, first
            continue
        if isinstance(info["default"], bool):
            assert action.option_strings == [f"--{name}"] and action.nargs == 0, name  # a switch: --overwrite
            continue
        assert action.option_strings == [f"--{name}"], name
        assert action.choices == info["choices"], name
        expected = None if model is EmaSettings and name in EMA_RULE_FLAGS else info["default"]
        assert action.default == expected, name
        assert action.required == model.model_fields[name].is_required(), name


def test_the_forms_widgets_take_label_hint_start_and_choices_from_the_model(tmp_path):
    merge = _page(tmp_path / "m", merge_tab.build)
    ema = _page(tmp_path / "e", ema_tab.build)
    for model, widgets, by_id in ((MergeSettings, MERGE_WIDGETS, merge),
                                  (MergeLorasSettings, MERGE_LORAS_WIDGETS, merge), (EmaSettings, EMA_WIDGETS, ema)):
        assert set(widgets) | FROM_TABLES[model] == set(model.model_fields), model.__name__
        for name, elem_id in widgets.items():
            info, widget = model.field_info()[name], by_id[elem_id]
            assert widget.label == info["label"], name
            if model is MergeLorasSettings and name == "out":  # one output box: its hint follows the merge chosen
                ws = Workspace(tmp_path / "ws")
                assert merge_tab.MergePanel(AppContext(ws, JobManager(ws.jobs))).on_mode("loras")[2]["info"] == \
                    info["help"]
            else:
                assert widget.info.startswith(info["help"]), name  # the output's hint adds what a pair writes
            if name not in ("dit", "out"):  # these start from the workspace's demo model and a free file name
                assert (widget.value if widget.value != "" else None) == info["default"], name
            if info["choices"]:
                values = [choice[1] if isinstance(choice, tuple) else choice for choice in widget.choices]
                expected = ["cpu"] if name == "device" else info["choices"]  # no cuda on a machine without a GPU
                assert values == expected or (name == "device" and values == info["choices"]), name


def test_the_argv_a_tab_starts_reads_back_through_the_command_line_as_the_same_settings(tmp_path):
    base, high = tmp_path / "low_noise.safetensors", tmp_path / "high_noise.safetensors"
    a, b = tmp_path / "a.safetensors", tmp_path / "-b.safetensors"
    pair = DitMerge([Pick(a, 1.0, "high"), Pick(b, 0.5, "both")], base, tmp_path / "m.safetensors", high,
                    dtype="bf16", allow_overlap=True)
    settings = pair.settings()
    assert settings.lora == [str(b)] and settings.lora_high_noise == [str(a), str(b)]
    assert settings.multiplier_high_noise == [1.0, 0.5] and settings.dtype == "bf16" and settings.allow_overlap
    assert pair.arguments()[0] == "merge"
    assert MergeSettings(**vars(_parser(merge_cli).parse_args(pair.arguments()[1:]))) == settings

    loras = LoraMerge([Pick(a, 1.0), Pick(b, 0.7)], tmp_path / "ab.safetensors", rank=8, precision="bf16",
                      overwrite=True)
    parsed = _parser(merge_loras_cli).parse_args(loras.arguments()[1:])
    assert loras.arguments()[0] == "merge-loras"
    assert MergeLorasSettings(**vars(parsed)) == loras.settings()

    for rule in ("power", "beta", "uniform"):
        ema = EmaSettings(inputs=[str(tmp_path / "run")], out=str(tmp_path / "e.safetensors"), rule=rule,
                          sigma_rel=0.1, beta=0.9, beta2=0.8, space="delta", overwrite=True)
        argv = ema.arguments()
        back = ema_from_flags(vars(_parser(ema_cli).parse_args(argv[1:])))
        assert argv[0] == "ema" and back.rule == rule and back.rule_values() == ema.rule_values()
        assert back.model_dump(exclude={"sigma_rel", "beta", "beta2"}) == \
            ema.model_dump(exclude={"sigma_rel", "beta", "beta2"})


def test_the_ema_command_line_keeps_its_rule_flags(tmp_path, capsys):
    def read(*argv):
        return ema_from_flags(vars(_parser(ema_cli).parse_args(["run", "--out", "e.safetensors", *argv])))

    assert (read().rule, read().sigma_rel) == ("power", 0.2)
    assert read("--uniform").rule_values() == {"sigma_rel": None, "beta": None, "beta2": None, "uniform": True}
    assert read("--beta", "0.9").rule_values() == {"sigma_rel": None, "beta": 0.9, "beta2": None, "uniform": False}
    assert read("--rule", "beta").beta == 0.95  # the model's starting β
    assert read("--sigma_rel", "0.1").rule_values()["sigma_rel"] == 0.1
    for mixed in (["--sigma_rel", "0.1", "--beta", "0.9"], ["--uniform", "--beta", "0.9"]):
        with pytest.raises(UserError, match="belong to different averaging rules"):
            read(*mixed)
    with pytest.raises(UserError, match="--beta2 needs --beta"):
        read("--beta2", "0.9")
    # an out-of-range σ_rel is said first, before the missing run folder
    assert main(["ema", str(tmp_path / "missing"), "--out", str(tmp_path / "e.safetensors"), "--sigma_rel", "0.5"]) == 2
    assert capsys.readouterr().err.startswith("error: σ_rel (sigma_rel) must be between 0 and 1/√12")


class _MergeLorasWithSeed(MergeLorasSettings):
    seed: int = setting(3, label="SVD seed", group="Merge", help="a field added to the model")


def test_a_field_added_to_a_model_reaches_the_command_line_the_form_and_the_argv(tmp_path):
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, _MergeLorasWithSeed)
    assert parser.parse_args(["--lora", "a", "--out", "o"]).seed == 3
    settings = _MergeLorasWithSeed(lora=["a", "b"], out="o.safetensors", seed=5)
    assert "--seed=5" in settings.flag_arguments()
    assert _MergeLorasWithSeed(**vars(parser.parse_args(settings.flag_arguments()))) == settings
    assert shown(_MergeLorasWithSeed, "seed") == {"label": "SVD seed", "info": "a field added to the model"}


def test_a_merges_settings_give_back_the_merge_they_came_from(tmp_path):
    """A preset holds the job's settings; loading it turns them back into the merge (picks in their order, each with
    its strength and expert, a file on both experts one pick, the pair's output name), so it runs the same job."""
    files = [tmp_path / f"{name}.safetensors" for name in ("a", "b", "c", "d")]
    low, high = tmp_path / "w-low_noise.safetensors", tmp_path / "w-high_noise.safetensors"
    pair = DitMerge([Pick(files[0], 1.0, "high"), Pick(files[1], 0.5, "both"), Pick(files[2], 1.5, "low"),
                     Pick(files[3], 0.25, "high")], low, tmp_path / "m.safetensors", high, dtype="fp16",
                    overwrite=True)
    assert DitMerge.from_settings(pair.settings()) == pair
    assert DitMerge.from_settings(pair.settings()).arguments() == pair.arguments()
    single = DitMerge([Pick(files[0], 0.75), Pick(files[1], 1.0)], tmp_path / "dit.safetensors",
                      tmp_path / "s.safetensors", allow_overlap=True)
    assert DitMerge.from_settings(single.settings()) == single
    loras = LoraMerge([Pick(files[2], 1.0), Pick(files[3], 0.7)], tmp_path / "cd.safetensors", rank=8,
                      precision="bf16")
    assert LoraMerge.from_settings(loras.settings()) == loras
    one_for_all = MergeSettings(dit=str(low), lora=[str(files[0]), str(files[1])], multiplier=[0.5],
                                out=str(tmp_path / "o.safetensors"))
    assert [pick.multiplier for pick in DitMerge.from_settings(one_for_all).picks] == [0.5, 0.5]
    with pytest.raises(UserError, match=r"^3 strengths are given for 2 LoRA files; give one value for all or one "
                                        r"per file\.$"):
        DitMerge.from_settings(one_for_all.model_copy(update={"multiplier": [1.0, 2.0, 3.0]}))

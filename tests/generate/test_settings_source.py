"""Generate's options are declared once, in GenerateSettings: the Generate tab's widgets, the `generate` command
line and a job's argv all come from its fields, and a field added to a settings model appears in all three."""
from __future__ import annotations

import argparse

import gradio as gr
import pytest

from backend.config.settings import add_setting_arguments, setting
from backend.generate.cli import add_arguments
from backend.generate.model_options import ModelPick
from backend.generate.request import GenerateRequest
from backend.generate.settings import DEMO_START, GenerateSettings
from backend.jobs import JobManager
from backend.workspace import Workspace
from ui.context import AppContext
from ui.generate_form import GenerateForm
from ui.tabs import generate as generate_tab

FIELDS = list(GenerateSettings.model_fields)
NO_DEFAULT_ON_THE_COMMAND_LINE = {"prompt", "seed"}  # absent: no prompt (an error) / a random seed, recorded


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_the_model_lists_every_option_with_what_a_form_needs():
    assert FIELDS == ["prompt", "negative_prompt", "width", "height", "frames", "fps", "steps", "guidance_scale",
                      "flow_shift", "sampler", "seed", "guidance_scale_2", "image"]
    for name, info in GenerateSettings.field_info().items():
        assert info["label"] and info["help"] and info["group"], name
    assert GenerateSettings.field_info()["sampler"]["choices"] == ["unipc", "euler"]


def test_the_command_line_takes_its_flags_defaults_choices_and_help_from_the_model():
    actions = {action.dest: action for action in _parser()._actions}
    for name, info in GenerateSettings.field_info().items():
        action = actions[name]
        assert action.option_strings == [f"--{name}"]
        assert action.help == info["help"]
        assert action.choices == info["choices"]
        expected = None if name in NO_DEFAULT_ON_THE_COMMAND_LINE else info["default"]
        assert action.default == expected, name
    parsed = _parser().parse_args(["--prompt", "a cat", "--seed", "3"])
    assert {name: getattr(parsed, name) for name in FIELDS} == GenerateSettings(prompt="a cat", seed=3).model_dump()


def test_the_form_starts_from_the_model_and_its_demo_preset(tmp_path):
    start = GenerateForm()
    for name in FIELDS:
        assert name in GenerateForm.names(), name
    assert start.settings() == DEMO_START  # the demo preset is the model's defaults with a smaller size
    changed = DEMO_START.model_dump().items() - GenerateSettings().model_dump().items()
    assert {name for name, _ in changed} == {"width", "height", "frames", "steps"}

    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    with gr.Blocks() as page:
        with gr.Tab("Generate") as tab:
            generate_tab.build(AppContext(ws, JobManager(ws.jobs)), tab)
    by_id = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    info = GenerateSettings.field_info()
    for name in FIELDS:
        widget = by_id[{"negative_prompt": "gen-negative-prompt", "guidance_scale": "gen-guidance",
                        "guidance_scale_2": "gen-guidance-2"}.get(name, f"gen-{name.replace('_', '-')}")]
        assert widget.label == info[name]["label"], name
        if name != "image":
            assert widget.value == (getattr(start, name)), name


def test_a_jobs_argv_carries_every_set_field_and_the_cli_reads_it_back(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    settings = DEMO_START.with_overrides(prompt="-a dash first", guidance_scale_2=2.5, seed=9)
    request = GenerateRequest(ModelPick(demo="demo-a14b"), settings)
    parsed = _parser().parse_args(request.arguments(ws.root)[1:])
    assert {name: getattr(parsed, name) for name in FIELDS} == settings.model_dump()
    random = GenerateRequest(ModelPick(demo="demo-a14b"), settings, random_seed=True)
    assert _parser().parse_args(random.arguments(ws.root)[1:]).seed is None


class _WithExtra(GenerateSettings):
    cfg_zero: float = setting(0.25, label="CFG zero", group="Sampling", help="a field added to the model")


def test_a_field_added_to_a_model_reaches_the_command_line_and_the_argv():
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, _WithExtra)
    assert parser.parse_args([]).cfg_zero == 0.25
    assert parser.parse_args(["--cfg_zero", "0.5"]).cfg_zero == 0.5
    assert "--cfg_zero=0.25" in _WithExtra(prompt="x").arguments()
    assert _WithExtra.field_info()["cfg_zero"]["label"] == "CFG zero"


def test_true_false_settings_are_switches_on_the_command_line():
    class WithSwitch(GenerateSettings):
        loud: bool = setting(False, label="Loud", group="Sampling", help="a switch")

    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, WithSwitch)
    assert parser.parse_args([]).loud is False
    assert parser.parse_args(["--loud"]).loud is True

"""Generate's options are declared once, in the settings parts of the Generate job (GenerateSettings, ModelSource,
Companions, LoraOptions, MoeOptions, MemoryOptions, RunOptions): the Generate tab's widgets, the `generate` command
line, the backend's checks and a job's argv all come from their fields, and a field added to a part appears in all."""
from __future__ import annotations

import argparse

import gradio as gr
import pytest

from backend.config.settings import add_setting_arguments, setting
from backend.generate.cli import add_arguments
from backend.generate.memory import MemoryOptions
from backend.generate.model_options import ModelPick
from backend.generate.options import PARTS, Companions, GenerateJob, LoraOptions, MoeOptions, part_of
from backend.generate.request import GenerateRequest
from backend.generate.settings import DEMO_START, GenerateSettings
from backend.jobs import JobManager
from backend.workspace import Workspace
from ui.context import AppContext
from ui.generate_form import FORM_PARTS, GenerateForm, form_class
from ui import moe_generate, settings_form
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


def test_the_form_starts_from_the_model_and_its_demo_preset():
    start = GenerateForm()
    for name in FIELDS:
        assert name in GenerateForm.names(), name
    assert start.settings() == DEMO_START  # the demo preset is the model's defaults with a smaller size
    changed = DEMO_START.model_dump().items() - GenerateSettings().model_dump().items()
    assert {name for name, _ in changed} == {"width", "height", "frames", "steps"}


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
    assert (parser.parse_args([]).loud, parser.parse_args(["--loud"]).loud) == (False, True)
    assert "--loud" in WithSwitch(loud=True).arguments() and "--loud" not in WithSwitch().arguments()

    class WithOn(GenerateSettings):
        quiet: bool = setting(True, label="Quiet", group="Sampling", help="on unless turned off")

    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, WithOn)
    assert (parser.parse_args([]).quiet, parser.parse_args(["--no_quiet"]).quiet) == (True, False)


# --- the whole Generate job --------------------------------------------------------------------------------------
JOB_FIELDS = ["model", "dit", "model_kind", "boundary_ratio", "vae", "text_encoder", "tokenizer", "image_encoder",
              *FIELDS, "lora", "loraid", "multiplier", "allow_overlap", "hooked", "moe", "hint", "expert_strength",
              "router_ema", "cpu_offload", "fp8", "blocks_to_swap", "fp8_scaled", "dtype", "memory",
              "memory_limit_gb", "vae_tiling", "stream_text_encoder", "workspace", "from_file", "out_dir",
              "save_latents", "save_frames", "decode_latents"]
# Fields the Generate tab shows in its own way rather than one widget per field, and why.
FORM_SHOWS_OTHERWISE = {
    "model": "one model box: a demo name, a merged model or typed path(s)", "dit": "the same model box",
    "model_kind": "the model type box beside it", "boundary_ratio": "the model type's own",
    "lora": "the LoRA file list", "multiplier": "one slider per chosen file", "hooked": "the LoRA mode choice",
}
# Fields only the command line has, and why.
COMMAND_LINE_ONLY = {"workspace": "the app's workspace", "from_file": "one prompt per Run in the tab",
                     "out_dir": "the tab's gallery lists the workspace's outputs",
                     "decode_latents": "a separate command"}


def _every_field():
    return {name: part for part in PARTS.values() for name in part.model_fields}


def test_the_job_lists_every_option_once_with_what_a_form_needs():
    assert list(GenerateJob.model_fields) == JOB_FIELDS
    fields = _every_field()
    assert list(fields) == JOB_FIELDS  # no field in two parts
    for name, part in fields.items():
        info = part.field_info()[name]
        assert info["label"] and info["help"] and info["group"], name
        assert GenerateJob.field_info()[name] == info, name
    assert set(FORM_SHOWS_OTHERWISE) | set(COMMAND_LINE_ONLY) | set(GenerateForm.names()) >= set(JOB_FIELDS)


def test_every_job_field_is_a_command_line_flag_with_the_fields_help_choices_and_default():
    actions = {action.dest: action for action in _parser()._actions}
    assert set(actions) - {"help"} == set(JOB_FIELDS)
    for name, part in _every_field().items():
        info, action = part.field_info()[name], actions[name]
        assert action.option_strings == [f"--{name}"], name
        assert (action.help, action.choices) == (info["help"], info["choices"]), name
        expected = None if name in NO_DEFAULT_ON_THE_COMMAND_LINE else info["default"]
        assert action.default == expected, name
    switches = [name for name, action in actions.items() if action.nargs == 0 and name != "help"]
    assert switches == [name for name, part in _every_field().items()
                        if part.model_fields[name].annotation is bool]


def test_every_form_field_is_a_widget_with_the_fields_label_and_starting_value(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    with gr.Blocks() as page:
        with gr.Tab("Generate") as tab:
            generate_tab.build(AppContext(ws, JobManager(ws.jobs)), tab)
    by_id = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    start = GenerateForm()
    shown_as_widgets = [name for part, names in FORM_PARTS.items() for name in names]
    assert sorted(shown_as_widgets + list(FORM_SHOWS_OTHERWISE) + list(COMMAND_LINE_ONLY)) == sorted(JOB_FIELDS)
    for name in shown_as_widgets:
        part, widget = _every_field()[name], by_id[generate_tab.elem_id(name)]
        assert widget.label == part.field_info()[name]["label"], name
        if name in generate_tab.FIELD_ERRORS:  # its own message slot right under it
            assert f"{generate_tab.elem_id(name)}-error" in by_id, name
        if name in FIELDS:  # the widgets start from the demo preset (the form's settings, checked above)
            if name != "image":
                assert widget.value == getattr(start, name), name
            continue
        default = part.field_info()[name]["default"]
        if isinstance(default, list):  # a list field is a text box of its values
            default = ", ".join(map(str, default))
        unset = "" if isinstance(widget, (gr.Textbox, gr.Dropdown)) else None  # a text or a choice: "" is "not set"
        assert getattr(start, name) == (unset if default is None else default), name
        assert widget.value == getattr(start, name), name
        if part.field_info()[name]["choices"]:
            assert [value for _, value in widget.choices] == part.field_info()[name]["choices"], name


def test_a_form_with_every_part_changed_gives_an_argv_the_command_line_reads_back(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    for folder in ("vae", "te"):
        (ws.root / folder).mkdir()
    ws.demo_t2v.mkdir(parents=True)  # read_model checks the demo model is there
    form = GenerateForm(prompt="a red ball", vae="vae", text_encoder="te", fp8_scaled=True, blocks_to_swap=2,
                        dtype="fp32", memory="manual", memory_limit_gb=24, vae_tiling=True, save_latents=True,
                        save_frames=True, lora_mode="hooked", model="demo-t2v")
    request = form.request(ws)
    parsed = _parser().parse_args(request.arguments(ws.root)[1:])
    assert part_of(parsed, MemoryOptions) == request.memory == MemoryOptions(
        fp8_scaled=True, blocks_to_swap=2, dtype="fp32", memory="manual", memory_limit_gb=24.0, vae_tiling=True)
    assert part_of(parsed, Companions) == request.companions == Companions(vae=str(ws.root / "vae"),
                                                                           text_encoder=str(ws.root / "te"))
    assert (parsed.save_latents, parsed.save_frames, parsed.hooked, parsed.model) == (True, True, True, "demo-t2v")
    assert part_of(parsed, GenerateSettings, seed=parsed.seed) == request.settings
    plain = _parser().parse_args(GenerateRequest(ModelPick(demo="demo-t2v"), DEMO_START).arguments(ws.root)[1:])
    assert part_of(plain, MemoryOptions) == MemoryOptions() and part_of(plain, LoraOptions) == LoraOptions()


class _MemoryWithExtra(MemoryOptions):
    offload_vae_only: bool = setting(False, label="Offload only the VAE", group="Memory", help="a field added")
    cache_gb: float = setting(2.0, label="Cache (GB)", group="Memory", help="another field added")


def test_a_field_added_to_a_part_reaches_the_command_line_the_argv_and_the_form():
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, _MemoryWithExtra)
    assert (parser.parse_args([]).offload_vae_only, parser.parse_args([]).cache_gb) == (False, 2.0)
    changed = _MemoryWithExtra(offload_vae_only=True, cache_gb=3.5)
    assert changed.flag_arguments(only_changed=True) == ["--offload_vae_only", "--cache_gb=3.5"]
    assert vars(parser.parse_args(changed.flag_arguments())) == changed.model_dump()

    parts = {**FORM_PARTS, _MemoryWithExtra: list(_MemoryWithExtra.model_fields)}
    del parts[MemoryOptions]
    form = form_class(parts)
    assert {"offload_vae_only", "cache_gb"} <= set(form.names())
    assert (form().cache_gb, form().offload_vae_only) == (2.0, False)
    problems: dict = {}
    assert form(cache_gb="3.5", offload_vae_only=1)._part(_MemoryWithExtra, problems) == changed.model_dump()
    assert problems == {}
    form(cache_gb="lots")._part(_MemoryWithExtra, problems)
    assert problems == {"cache_gb": "Cache (GB) (cache_gb) `lots` is not a number; type a number."}


class _MoeWithExtra(MoeOptions):
    expert_temperature: float = setting(1.0, label="Expert temperature", group="LoRA-MoE", help="a field added")


def test_a_field_added_to_the_moe_options_reaches_the_command_line_the_argv_and_the_picker(tmp_path):
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, _MoeWithExtra)
    assert parser.parse_args([]).expert_temperature == 1.0
    changed = _MoeWithExtra(moe="x.safetensors", hint="red", expert_strength=["red=2"], expert_temperature=0.5)
    assert changed.flag_arguments(only_changed=True) == ["--moe=x.safetensors", "--hint=red", "--expert_strength",
                                                         "red=2", "--expert_temperature=0.5"]
    assert vars(parser.parse_args(changed.flag_arguments())) == changed.model_dump()

    parts = {**FORM_PARTS, _MoeWithExtra: list(_MoeWithExtra.model_fields)}
    del parts[MoeOptions]
    form = form_class(parts)
    assert {"moe", "hint", "expert_strength", "router_ema", "expert_temperature"} <= set(form.names())
    assert (form().expert_temperature, form().moe, form().expert_strength) == (1.0, "", "")
    problems: dict = {}
    given = form(moe="x.safetensors", hint="red", expert_strength="red=2", expert_temperature="0.5")
    assert _MoeWithExtra(**given._part(_MoeWithExtra, problems)) == changed and problems == {}

    ws = Workspace(tmp_path / "ws")
    ws.ensure_folders()
    with gr.Blocks():  # the picker makes one widget per field of its model, each from the field
        made = moe_generate.build(AppContext(ws, JobManager(ws.jobs)), lambda name, **how: settings_form.widget(
            _MoeWithExtra, name, getattr(form(), name), f"moe-{name}", how.get("choices"), how.get("typed", False)),
            _MoeWithExtra)
    assert [name for name in made if name in _MoeWithExtra.model_fields] == list(_MoeWithExtra.model_fields)
    assert (made["expert_temperature"].label, made["expert_temperature"].value) == ("Expert temperature", 1.0)
    assert made["hint"].choices == [("router decides", "")] and made["moe"].allow_custom_value

"""Every registered job type's settings model gives each field what a form needs (label, help, group), and the
command-line flags made from it carry that field's help, choices and default."""
from __future__ import annotations

import argparse
import typing

import pytest

from backend.config.job_settings import JOB_SETTINGS, settings_model
from backend.config.settings import Settings, add_setting_arguments, setting

JOB_TYPES = ("dataset", "cache-latents", "cache-text", "train", "merge", "merge-loras", "ema", "generate",
             "interference")
MODELS = sorted(JOB_SETTINGS.items())


def _actions(model: type[Settings]) -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, model)
    parser.format_help()  # every help text renders (a bare % in a help would raise here)
    return {action.dest: action for action in parser._actions}


def test_the_registry_covers_the_train_compose_and_generate_jobs_and_only_known_job_types():
    assert {"train", "merge", "merge-loras", "ema", "generate"} <= set(JOB_SETTINGS)
    assert set(JOB_SETTINGS) <= set(JOB_TYPES)
    assert all(issubclass(model, Settings) for model in JOB_SETTINGS.values())
    assert settings_model("train") is JOB_SETTINGS["train"]
    with pytest.raises(KeyError, match="no settings model for job type `nothing`"):
        settings_model("nothing")


@pytest.mark.parametrize("job_type, model", MODELS, ids=[job for job, _ in MODELS])
def test_every_field_has_a_label_help_and_group(job_type, model):
    assert model.model_fields, job_type
    for name, info in model.field_info().items():
        assert info["label"].strip(), f"{job_type}.{name} has no label"
        assert info["help"].strip(), f"{job_type}.{name} has no help"
        assert info["group"].strip() and info["group"] != "Other", f"{job_type}.{name} has no group"
        choices = info["choices"]
        if choices is not None:
            assert choices and len(set(map(str, choices))) == len(choices), f"{job_type}.{name}: choices {choices}"
            assert info["default"] is None or info["default"] in choices, f"{job_type}.{name}: default not a choice"
        literal = [arg for arg in typing.get_args(model.model_fields[name].annotation)] \
            if typing.get_origin(model.model_fields[name].annotation) is typing.Literal else None
        if literal:
            assert choices == literal, f"{job_type}.{name}: its choices differ from the values it accepts"


@pytest.mark.parametrize("job_type, model", MODELS, ids=[job for job, _ in MODELS])
def test_the_command_line_flags_carry_each_fields_help_choices_and_default(job_type, model):
    actions = _actions(model)
    for name, info in model.field_info().items():
        action = actions[name]
        assert action.help.replace("%%", "%") == info["help"], f"{job_type}.{name}"
        if isinstance(info["default"], bool):
            switch = f"--no_{name}" if info["default"] else f"--{name}"
            assert action.option_strings == [switch] and action.nargs == 0, f"{job_type}.{name}"
        else:
            assert action.option_strings == [f"--{name}"], f"{job_type}.{name}"
            assert action.choices == info["choices"], f"{job_type}.{name}"
        assert action.default == info["default"], f"{job_type}.{name}"


def _required_values(model: type[Settings]) -> dict:
    """A value for each required field (a job cannot run without these, so the command line asks for them)."""
    sample = {str: "x.safetensors", int: 1, float: 0.5}
    values = {}
    for name, field in model.model_fields.items():
        if field.is_required():
            kind = field.annotation
            values[name] = [sample[typing.get_args(kind)[0]]] if typing.get_origin(kind) is list else sample[kind]
    return values


@pytest.mark.parametrize("job_type, model", MODELS, ids=[job for job, _ in MODELS])
def test_the_models_defaults_and_the_flags_they_give_read_back_through_the_command_line(job_type, model):
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, model)
    required = _required_values(model)
    for name in required:
        assert {action.dest: action for action in parser._actions}[name].required, f"{job_type}.{name}"
    settings = model(**required)
    given = [arg for name, value in required.items()
             for arg in ([f"--{name}", *map(str, value)] if isinstance(value, list) else [f"--{name}={value}"])]
    assert model(**vars(parser.parse_args(given))) == settings, job_type
    assert model(**vars(parser.parse_args(settings.flag_arguments()))) == settings, job_type


class _Switches(Settings):
    loud: bool = setting(False, label="Loud", group="Output", help="say it at 100% volume")
    colour: bool = setting(True, label="Colour", group="Output", help="colour the output")
    tags: list[str] = setting([], label="Tags", group="Output", help="words to attach")
    sizes: list[int] = setting([4], label="Sizes", group="Output", help="sizes to try")
    mode: typing.Literal["fast", "exact"] = setting("fast", label="Mode", group="Output", choices=["fast", "exact"],
                                                   help="how to do it")
    out: str = setting(..., label="Output", group="Output", help="where it goes")


def test_switches_lists_choices_and_required_flags_parse_as_a_user_types_them():
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, _Switches)
    assert vars(parser.parse_args(["--out", "o"])) == {"loud": False, "colour": True, "tags": [], "sizes": [4],
                                                       "mode": "fast", "out": "o"}
    parsed = parser.parse_args(["--loud", "--no_colour", "--tags", "a", "b", "--sizes", "8", "--sizes", "16",
                                "--mode", "exact", "--out=-dash"])
    expected = {"loud": True, "colour": False, "tags": ["a", "b"], "sizes": [8, 16], "mode": "exact", "out": "-dash"}
    assert vars(parsed) == expected
    assert parser.parse_args(["--out", "o"]).sizes == [4]  # the default list is not grown by an earlier parse
    settings = _Switches(**expected)
    assert settings.flag_arguments() == ["--loud", "--no_colour", "--tags", "a", "b", "--sizes", "8", "16",
                                         "--mode=exact", "--out=-dash"]
    assert _Switches(**vars(parser.parse_args(settings.flag_arguments()))) == settings
    for wrong in (["--out", "o", "--mode", "slow"], []):  # not a choice; the required flag missing
        with pytest.raises(SystemExit):
            parser.parse_args(wrong)
    assert "100% volume" in parser.format_help()
    assert _Switches.field_info()["out"]["default"] is None

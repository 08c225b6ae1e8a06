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


def test_the_registry_covers_the_train_and_generate_jobs_and_only_known_job_types():
    assert {"train", "generate"} <= set(JOB_SETTINGS)
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


@pytest.mark.parametrize("job_type, model", MODELS, ids=[job for job, _ in MODELS])
def test_parsing_no_flags_gives_the_models_defaults(job_type, model):
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, model)
    parsed = vars(parser.parse_args([]))
    assert {name: parsed[name] for name in model.model_fields} == model.model_construct().model_dump(), job_type


class _Switches(Settings):
    loud: bool = setting(False, label="Loud", group="Output", help="say it at 100% volume")
    colour: bool = setting(True, label="Colour", group="Output", help="colour the output")
    tags: list[str] = setting([], label="Tags", group="Output", help="words to attach")
    sizes: list[int] = setting([4], label="Sizes", group="Output", help="sizes to try")
    mode: typing.Literal["fast", "exact"] = setting("fast", label="Mode", group="Output", choices=["fast", "exact"],
                                                   help="how to do it")


def test_switches_lists_and_choices_parse_as_a_user_types_them():
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, _Switches)
    assert vars(parser.parse_args([])) == {"loud": False, "colour": True, "tags": [], "sizes": [4], "mode": "fast"}
    parsed = parser.parse_args(["--loud", "--no_colour", "--tags", "a", "b", "--sizes", "8", "16", "--mode", "exact"])
    assert vars(parsed) == {"loud": True, "colour": False, "tags": ["a", "b"], "sizes": [8, 16], "mode": "exact"}
    assert _Switches(**vars(parsed)).sizes == [8, 16]
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "slow"])
    assert "100% volume" in parser.format_help()

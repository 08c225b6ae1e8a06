import json

import pytest

from backend.errors import UserError
from backend.train.settings import TrainSettings


def test_every_field_has_label_help_group():
    for name, info in TrainSettings.field_info().items():
        assert info["label"] and info["help"] and info["group"], name


def test_toml_round_trip_preserves_every_field():
    s = TrainSettings(network_type="dora", network_args=["use_rslora=True", "exclude_patterns=['.*a=b.*']"],
                      loraid=2, learning_rate=3e-4, save_every_n_steps=5, gradient_checkpointing=True)
    assert TrainSettings.from_toml_text(s.to_toml()) == s


def test_preset_round_trip_and_unknown_key(tmp_path):
    s = TrainSettings(network_dim=8, expert="both")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(s.to_preset("mine")))
    assert TrainSettings.load_file(path) == s
    bad = s.to_preset()
    bad["settings"]["netwrok_dim"] = 4
    path.write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"unknown setting\(s\) `netwrok_dim` \(did you mean `network_dim`\?\)"):
        TrainSettings.load_file(path)


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ('{"schema_version": 99, "settings": {}}', "schema_version 99"),
    ('{"schema_version": 1, "settings": {"network_dim": 0}}', "`network_dim` = 0 is invalid"),
    ('[1, 2]', "not a LORAID Studio preset"),
])
def test_bad_presets_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        TrainSettings.load_file(path)


def test_cli_overrides_and_render():
    base = TrainSettings()
    overrides = TrainSettings.parse_cli_overrides(
        ["--max_train_steps", "5", "--output_dir", "D", "--loraid", "2", "--gradient_checkpointing",
         "--network_args", "use_dora=True", "conv_dim=4"])
    s = base.with_overrides(overrides)
    assert (s.max_train_steps, s.output_dir, s.loraid, s.gradient_checkpointing) == (5, "D", 2, True)
    assert s.network_args == ["use_dora=True", "conv_dim=4"]
    again = base.with_overrides(TrainSettings.parse_cli_overrides(s.to_cli_args()))
    assert again == s


@pytest.mark.parametrize("argv, message", [
    (["--max_train_step", "5"], "did you mean `--max_train_steps`"),
    (["--max_train_steps", "five"], "`max_train_steps` = 'five' is invalid"),
    (["--min_timestep", "900", "--max_timestep", "100"], "must be below max_timestep"),
    (["--gradient_checkpointing", "maybe"], "expects true or false"),
    (["5"], "unexpected argument"),
])
def test_bad_cli_overrides(argv, message):
    with pytest.raises(UserError, match=message):
        TrainSettings().with_overrides(TrainSettings.parse_cli_overrides(argv))

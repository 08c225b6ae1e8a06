"""network_args: every key of the seed's quick-reference table and ours, all accepted forms, every bad input."""
from __future__ import annotations

import json
import tomllib

import pytest

from backend.adapters.network_args import (VALID_KEYS, NetworkArgs, network_args_help, parse_network_args,
                                           render_network_args, render_network_args_toml)
from backend.adapters.network_config import NetworkConfig
from backend.errors import UserError

SEED_TABLE_KEYS = ("use_rslora", "use_dora", "loraplus_lr_ratio", "rank_dropout", "module_dropout", "conv_dim",
                   "conv_alpha", "exclude_patterns", "include_patterns", "exclude_mod", "verbose")
OUR_KEYS = ("dropout", "rank_q", "rank_k", "rank_v", "rank_o", "rank_kvo", "rank_ffn", "algo", "factor")


def test_every_documented_key_is_accepted_with_help():
    assert set(SEED_TABLE_KEYS + OUR_KEYS) == set(VALID_KEYS)
    assert all(network_args_help()[key] for key in VALID_KEYS)


GOOD = [
    ("use_rslora=True", "use_rslora", True),
    ("use_rslora=false", "use_rslora", False),
    ("use_dora=1", "use_dora", True),
    ("loraplus_lr_ratio=8", "loraplus_lr_ratio", 8.0),
    ("loraplus_lr_ratio=1e1", "loraplus_lr_ratio", 10.0),
    ("dropout=0.1", "dropout", 0.1),
    ("rank_dropout=0", "rank_dropout", 0.0),
    ("module_dropout=0.25", "module_dropout", 0.25),
    ("conv_dim=32", "conv_dim", 32),
    ("conv_alpha=16", "conv_alpha", 16.0),  # needs conv_dim or algo=locon (see COMPANIONS)
    ("factor=8", "factor", 8), ("factor=-1", "factor", -1),
    ("exclude_patterns=['.*(img_mod|txt_mod|modulation).*']", "exclude_patterns",
     (".*(img_mod|txt_mod|modulation).*",)),
    (r"include_patterns=['.*attn\\.to_q.*', '.*attn\\.to_k.*']", "include_patterns",
     (r".*attn\.to_q.*", r".*attn\.to_k.*")),
    (r"include_patterns=['blocks\.(0|1)\..*']", "include_patterns", (r"blocks\.(0|1)\..*",)),  # musubi fixture
    ("exclude_patterns=['a=b', 'x{1,2}=']", "exclude_patterns", ("a=b", "x{1,2}=")),  # '=' inside the value
    ("exclude_patterns=[]", "exclude_patterns", ()),
    ("exclude_mod=False", "exclude_mod", False),
    ("verbose=True", "verbose", True),
    ("rank_q=8", "rank_q", 8), ("rank_k=4", "rank_k", 4), ("rank_v=4", "rank_v", 4), ("rank_o=2", "rank_o", 2),
    ("rank_kvo=16", "rank_kvo", 16), ("rank_ffn=32", "rank_ffn", 32),
    ("algo=LoKr", "algo", "lokr"),
    (" use_dora = True ", "use_dora", True),
]


COMPANIONS = {"conv_alpha": ("conv_dim", "conv_dim=8", 8), "factor": ("algo", "algo=lokr", "lokr")}


@pytest.mark.parametrize("entry,key,value", GOOD)
def test_good_entries(entry, key, value):
    companion_key, companion, companion_value = COMPANIONS.get(key, (None, None, None))
    args = parse_network_args([entry] + ([companion] if companion else []))
    assert getattr(args, key) == value and type(getattr(args, key)) is type(value)
    if companion:
        assert getattr(args, companion_key) == companion_value
    assert all(getattr(args, other) is None for other in VALID_KEYS if other not in (key, companion_key))


BAD = [
    ("use_dorra=True", r"Unknown network_args key `use_dorra`; did you mean `use_dora`\?"),
    ("loraplus_ratio=8", "did you mean `loraplus_lr_ratio`"),
    ("rank_kv=8", "did you mean `rank_kvo`"),
    ("network_dim=8", "Unknown network_args key `network_dim`"),
    ("use_dora", "`use_dora` is not key=value"),
    ("=True", "is not key=value"),
    ("use_dora=", "`use_dora=` has no value"),
    ("use_dora=yes please", "use_dora=yes please: expected True or False"),
    ("use_rslora=ture", "use_rslora=ture: expected True or False"),
    ("loraplus_lr_ratio=abc", "loraplus_lr_ratio=abc: expected a number above 0"),
    ("loraplus_lr_ratio=0", "expected a number above 0"),
    ("loraplus_lr_ratio=nan", "expected a number"),
    ("dropout=1", "dropout=1: expected a number at least 0 and below 1"),
    ("rank_dropout=-0.1", "rank_dropout=-0.1"),
    ("module_dropout=high", "module_dropout=high"),
    ("conv_dim=4.5", "conv_dim=4.5: expected a whole number of at least 0"),
    ("conv_dim=-1", "conv_dim=-1"),
    ("conv_alpha=-2", "conv_alpha=-2"),
    ("rank_q=0", "rank_q=0: expected a whole number of at least 1"),
    ("factor=0", r"factor=0: .*\(or -1 for automatic\)"),
    ("algo=lycoris", "algo=lycoris: expected one of lora, dora, locon, loha, lokr"),
    ("exclude_patterns=.*modulation.*", "expected a Python list of regex strings"),
    ("exclude_patterns=['a', 3]", "expected a Python list of regex strings"),
    ("include_patterns=__import__('os')", "expected a Python list of regex strings"),  # never evaluated
    ("exclude_patterns=['[unclosed']", r"`\[unclosed` is not a valid regular expression"),
    ("include_patterns=['(?P<x']", "not a valid regular expression"),
]


@pytest.mark.parametrize("entry,match", BAD)
def test_bad_entries_are_one_sentence_errors(entry, match):
    with pytest.raises(UserError, match=match) as info:
        parse_network_args([entry])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("entries,match", [
    (["use_dora=True", "use_dora=False"], "sets `use_dora` twice"),
    (["algo=dora", "use_dora=False"], "algo=dora contradicts use_dora=False"),
    (["factor=8"], "factor only applies to LoKr"),
    (["algo=locon", "conv_dim=0"], "conv_dim=0 turns them off"),
    (["conv_alpha=4"], "conv_alpha has no effect without conv_dim"),
    ([3], "must be strings"),
])
def test_bad_combinations(entries, match):
    with pytest.raises(UserError, match=match):
        parse_network_args(entries)


FULL = ["algo=lokr", "use_rslora=True", "use_dora=True", "loraplus_lr_ratio=8", "module_dropout=0.1",
        "conv_dim=8", "conv_alpha=4", r"exclude_patterns=['.*']", r"include_patterns=['blocks\\.(0|1)\\..*']",
        "verbose=False", "rank_q=8", "rank_kvo=4", "rank_ffn=16", "factor=-1"]


def test_cli_list_toml_list_and_snippets_agree():
    cli = parse_network_args(FULL)
    toml_line = "network_args = [" + ", ".join(json.dumps(entry) for entry in FULL) + "]"
    assert parse_network_args(tomllib.loads(toml_line)["network_args"]) == cli
    assert parse_network_args(toml_line) == cli
    assert parse_network_args(toml_line.split("=", 1)[1]) == cli  # just the array
    snippet = '[network]\nnetwork_module = "networks.lora_wan"\nnetwork_dim = 4\n' + toml_line + "\n"
    assert parse_network_args(snippet) == cli
    assert parse_network_args("use_dora=True loraplus_lr_ratio=8") == NetworkArgs(use_dora=True, loraplus_lr_ratio=8.0)
    assert parse_network_args('"use_dora=True" "exclude_patterns=[\'.*ffn .*\']"').exclude_patterns == (".*ffn .*",)
    assert parse_network_args("") == parse_network_args(None) == parse_network_args([]) == NetworkArgs()


def test_bad_toml_is_a_user_error():
    with pytest.raises(UserError, match="not valid TOML"):
        parse_network_args('network_args = ["use_dora=True"')
    with pytest.raises(UserError, match="must be a list"):
        parse_network_args('network_args = "use_dora=True"')


def test_render_round_trips_in_every_form():
    args = parse_network_args(FULL)
    lines = render_network_args(args)
    assert parse_network_args(lines) == args
    assert parse_network_args(render_network_args_toml(args)) == args
    assert tomllib.loads(render_network_args_toml(args))["network_args"] == lines
    assert lines[:3] == ["algo=lokr", "use_rslora=True", "use_dora=True"]
    assert r"include_patterns=['blocks\\.(0|1)\\..*']" in lines
    assert render_network_args(NetworkArgs()) == []
    small = NetworkArgs(dropout=0.1, rank_q=2)
    assert render_network_args(small) == ["dropout=0.1", "rank_q=2"] and parse_network_args(
        render_network_args(small)) == small


def test_config_defaults_come_from_one_place():
    config = NetworkConfig.from_network_args(16, 8.0, ["algo=locon"])
    assert (config.family, config.adapts_conv, config.conv_rank, config.conv_alpha) == ("lora", True, 16, 8.0)
    config = NetworkConfig.from_network_args(16, 8.0, "algo=dora")
    assert config.use_dora and config.family == "lora" and not config.adapts_conv
    assert NetworkConfig.from_network_args(4, 1.0, ["algo=lokr"]).factor == -1
    with pytest.raises(UserError, match="network_dim"):
        NetworkConfig(rank=0)

"""The network_args builder: every key is a control, recipes give the seed's lines, state <-> lines round-trips,
and the musubi form adds the type and the LORAID slice."""
from __future__ import annotations

import pytest

from backend.adapters.network_args import VALID_KEYS, parse_network_args
from backend.config.network_builder import (BUILDER_KEYS, RECIPES, builder_lines, builder_state, empty_values,
                                            musubi_network_args, network_module, recipe_state)
from backend.errors import UserError
from backend.loraid.allocation import allocate

SEED_KNOWN_GOOD = {  # the seed's "Known-Good Combinations" that apply to Wan, exactly as it writes them
    "rslora": ["use_rslora=True"],
    "use-dora": ["use_dora=True"],
    "rslora-dora": ["use_rslora=True", "use_dora=True"],
    "rslora-loraplus": ["use_rslora=True", "loraplus_lr_ratio=8"],
    "full-combo": ["use_rslora=True", "use_dora=True", "loraplus_lr_ratio=8"],
    "style-dora-dropout": ["use_dora=True", "module_dropout=0.1"],
}


def test_every_network_args_key_but_algo_is_a_builder_control():
    assert set(BUILDER_KEYS) == set(VALID_KEYS) - {"algo"}


@pytest.mark.parametrize("name, seed_lines", SEED_KNOWN_GOOD.items())
def test_recipes_mean_what_the_seed_lines_mean(name, seed_lines):
    network_type, values = recipe_state(name)
    lines = builder_lines(network_type, values)
    assert parse_network_args(lines) == parse_network_args(seed_lines)


def test_type_recipes_set_the_network_type():
    assert {name: recipe_state(name)[0] for name in ("lora", "dora", "locon", "loha", "lokr")} == {
        "lora": "lora", "dora": "dora", "locon": "locon", "loha": "loha", "lokr": "lokr"}
    assert builder_lines(*recipe_state("dora")) == []  # the type carries DoRA; no algo line is stored
    assert builder_lines(*recipe_state("lokr")) == ["factor=-1"]
    assert set(RECIPES) >= set(SEED_KNOWN_GOOD) | {"attention-only"}


def test_every_control_renders_and_reads_back():
    values = {**empty_values(), "use_rslora": True, "loraplus_lr_ratio": 4.0, "dropout": 0.05, "rank_dropout": 0.1,
              "module_dropout": 0.2, "conv_dim": 8.0, "conv_alpha": 4.0, "exclude_patterns": ".*ffn.*\n.*norm.*",
              "include_patterns": r"blocks\.0\..*", "exclude_mod": False, "verbose": True, "rank_q": 4.0,
              "rank_k": 2.0, "rank_v": 2.0, "rank_o": 2.0, "rank_kvo": 3.0, "rank_ffn": 16.0, "use_dora": None}
    lines = builder_lines("lora", values)
    assert lines == ["use_rslora=True", "loraplus_lr_ratio=4.0", "dropout=0.05", "rank_dropout=0.1",
                     "module_dropout=0.2", "conv_dim=8", "conv_alpha=4.0", "exclude_patterns=['.*ffn.*', '.*norm.*']",
                     r"include_patterns=['blocks\\.0\\..*']", "exclude_mod=False", "verbose=True", "rank_q=4",
                     "rank_k=2", "rank_v=2", "rank_o=2", "rank_kvo=3", "rank_ffn=16"]
    network_type, state = builder_state("lora", lines)
    assert network_type == "lora" and builder_lines(network_type, state) == lines


def test_pasted_algo_sets_the_type_and_contradictions_are_one_sentence():
    assert builder_state("lora", 'network_args = ["algo=lokr", "factor=4"]') == (
        "lokr", {**empty_values(), "factor": 4})
    with pytest.raises(UserError, match="algo=loha but the network type is dora"):
        builder_state("dora", ["algo=loha"])
    with pytest.raises(UserError, match="factor only applies to LoKr"):
        builder_lines("lora", {"factor": 4})
    with pytest.raises(UserError, match="rank_q=2.5: expected a whole number"):
        builder_lines("lora", {"rank_q": 2.5})
    with pytest.raises(UserError, match="not a valid regular expression"):
        builder_lines("lora", {"exclude_patterns": "blocks\\.(0"})


def test_musubi_form_names_the_type_and_the_slice():
    allocation = allocate(1, 8, 2, model="demo-t2v")
    assert musubi_network_args("dora", ["use_rslora=True"], allocation) == [
        "use_dora=True", "use_rslora=True", "exclude_patterns=['.*']", r"include_patterns=[r'blocks\.(0|1)\..*']"]
    assert musubi_network_args("lokr", ["factor=-1"], None) == ["algo=lokr", "factor=-1"]
    assert (network_module("lora"), network_module("loha")) == ("networks.lora_wan", "lycoris.kohya")

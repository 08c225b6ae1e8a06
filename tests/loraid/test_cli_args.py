"""Both argument forms of the seed, de-duplication in order, and the multiplier rule."""
from __future__ import annotations

import argparse

import pytest

from backend.errors import UserError
from backend.loraid.cli_args import (add_loraid_arguments, add_multiplier_argument, parse_block_list,
                                     resolve_loraids, resolve_multipliers)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_loraid_arguments(parser)
    add_multiplier_argument(parser)
    return parser


@pytest.mark.parametrize("argv, expected", [
    (["--loraid", "1", "2", "3"], [1, 2, 3]),
    (["--loraid", "1", "--loraid", "2", "--loraid", "3"], [1, 2, 3]),
    (["--loraid", "3", "1", "--loraid", "2", "3", "--loraid", "1"], [3, 1, 2]),
    ([], []),
])
def test_both_forms_give_the_ids_in_order_without_repeats(argv, expected):
    assert resolve_loraids(_parser().parse_args(argv)) == expected


def test_bad_ids_are_refused_by_the_parser(capsys):
    for argv in (["--loraid", "0"], ["--loraid", "two"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(argv)
    assert "IDs start at 1" in capsys.readouterr().err


def test_allocation_options_parse():
    args = _parser().parse_args(["--loraid", "2", "--blocks_per_loraid", "4", "--module_group_split"])
    assert (args.blocks_per_loraid, args.module_group_split) == (4, True)


def test_multiplier_rule():
    parse = _parser().parse_args
    assert resolve_multipliers(3, parse(["--multiplier", "0.5"]).multiplier) == [0.5, 0.5, 0.5]
    assert resolve_multipliers(3, parse(["--multiplier", "1", "0.7", "0.3"]).multiplier) == [1.0, 0.7, 0.3]
    assert resolve_multipliers(2, parse(["--multiplier", "1", "--multiplier", "0.5"]).multiplier) == [1.0, 0.5]
    assert resolve_multipliers(2, parse([]).multiplier) == [1.0, 1.0]
    with pytest.raises(UserError, match="2 multipliers were given for 3 LoRAs"):
        resolve_multipliers(3, [1.0, 0.5])


def test_block_lists():
    assert parse_block_list("0-3, 8") == [0, 1, 2, 3, 8]
    assert parse_block_list("5 2 2") == [2, 5]
    for bad in ("3-1", "a", " "):
        with pytest.raises(UserError):
            parse_block_list(bad)

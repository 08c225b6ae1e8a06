"""`--config PRESET.json` for the commands whose flags come from one settings model (merge, merge-loras, ema): a
preset saved in the app gives the flags their defaults, so what the tab saved runs as it is, and a flag given on
the command line wins. The preset is read as strictly as the app reads it (backend/config/presets.py)."""
from __future__ import annotations

import argparse

CONFIG_HELP = ("a preset saved in the app (<workspace>/presets/<job type>/NAME.json): its settings are the defaults "
               "and the flags given here win")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PRESET.json", help=CONFIG_HELP)


def apply_preset(parser: argparse.ArgumentParser, settings_cls, argv: list[str]) -> None:
    """When `argv` names `--config FILE`, make FILE's settings (`preset_defaults`, told which settings `argv`
    gives) the defaults of `parser`'s arguments, which are then no longer required; a UserError when FILE is not a
    preset of `settings_cls`."""
    found, _ = _config_only().parse_known_args(argv)
    if not found.config:
        return
    flags = parser._option_string_actions  # argparse's map of "--name" to its argument
    given = {flags[token.split("=", 1)[0]].dest for token in argv if token.split("=", 1)[0] in flags}
    values = settings_cls.load_file(found.config).preset_defaults(given)
    for action in parser._actions:  # argparse keeps an argument's default and required flag on its action
        value = values.get(action.dest)
        if value is None or value == "" or value == []:
            continue
        action.default = list(value) if isinstance(value, (list, tuple)) else value
        action.required = False
        if not action.option_strings and action.nargs == "+":  # a positional list the preset already gives
            action.nargs = "*"


def _config_only() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    return parser

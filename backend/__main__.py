"""`python -m backend <command> [--help]`: the command-line entry point for everything the app can do.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`; modules are
imported only when their command runs, so `--help` and light commands start fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from backend.config.preset_cli import add_config_option, apply_preset
from backend.errors import UserError, os_error_sentence

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("backend.models.demo_cli", "create the demo workspace (tiny Wan models + sample dataset)"),
    "selfcheck": ("backend.jobs.selfcheck", "a short job that prints progress and honours stop requests"),
    "inspect": ("backend.adapters.inspect_cli", "show what a LoRA file holds (algorithm, ranks, blocks, LORAID)"),
    "convert": ("backend.adapters.convert_cli", "convert a LoRA file to the musubi, ComfyUI or diffusers layout, or to a plain LoRA"),
    "cache": ("backend.data.cache_cli", "cache VAE latents or UMT5 text outputs of a dataset TOML for training"),
    "blockmap": ("backend.loraid.blockmap_cli", "LORAID allocation table, capacities, patterns and interference report"),
    "merge": ("backend.compose.merge_cli", "fold LoRAs into a DiT checkpoint (streaming, exact, overlap-guarded)"),
    "merge-loras": ("backend.compose.merge_loras_cli", "merge LoRA files into one LoRA (exact concat or SVD resize)"),
    "ema": ("backend.compose.ema_cli", "post-hoc EMA of a run's LoRA checkpoints (power EMA by real steps)"),
    "share": ("backend.compose.share_cli", "blend LoRAs only inside the modules they share (LORAID-safe)"),
    "moe": ("backend.moe.cli", "LoRA-MoE: merge stage 1 into the DiT files, train experts + router, export one expert"),
    "slices": ("backend.train.slices", "train LORAID slices side by side (one process per GPU), then merge them"),
    "generate": ("backend.generate.cli", "generate videos / images on Wan models with LoRAs and LORAIDs"),
}


def _top_level_help() -> str:
    lines = ["usage: python -m backend <command> [options]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `python -m backend <command> --help` for a command's options.",
              "Training: accelerate launch -m backend.train --config FILE"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        print(f"error: unknown command `{name}`.{hint} Run `python -m backend --help` for the list.", file=sys.stderr)
        return 2
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m backend {name}", description=summary)
    module.add_arguments(parser)
    preset_settings = getattr(module, "PRESET_SETTINGS", None)
    if preset_settings is not None:
        add_config_option(parser)
    try:
        if hasattr(module, "translate_argv"):  # flags of other tools mapped to ours (or refused with a sentence)
            rest = module.translate_argv(rest)
        if preset_settings is not None:
            apply_preset(parser, preset_settings, rest)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(rest)
    if preset_settings is not None:
        del args.config  # read above; the command's settings model has no such field
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        sentence = os_error_sentence(exc)
        if sentence is None:
            raise
        print(f"error: {sentence}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`accelerate launch -m backend.train --config FILE [--workspace DIR] [--name value ...]` (or `python -m backend.train`).

FILE is a run TOML or a preset JSON (TrainSettings); any setting can follow as `--name value`, e.g.
`--max_train_steps 5 --output_dir D --loraid 2 --resume D/lora-step000003-state`. Relative paths in the settings
are taken relative to the workspace (see backend/train/paths.py). Bad input prints one line and exits with 2.
"""
from __future__ import annotations

import argparse
import sys

from backend.errors import UserError, os_error_sentence


def parse(argv: list[str]):
    from backend.train.settings import TrainSettings
    from backend.workspace import Workspace

    parser = argparse.ArgumentParser(prog="accelerate launch -m backend.train",
                                     description="Train a LoRA-family adapter on a Wan transformer.",
                                     epilog="Any training setting can be given as --name value (see the Train tab "
                                            "or backend/train/settings.py).")
    parser.add_argument("--config", required=True, help="run TOML or preset JSON with the training settings")
    parser.add_argument("--workspace", default=None, help="workspace folder (demo models, loras/, LORAID registry)")
    args, rest = parser.parse_known_args(argv)
    settings = TrainSettings.load_file(args.config)
    overrides = TrainSettings.parse_cli_overrides(rest)
    if overrides:
        settings = settings.with_overrides(overrides)
    workspace = Workspace(args.workspace) if args.workspace else None
    if workspace is not None and workspace.root.exists() and not workspace.root.is_dir():
        raise UserError(f"the workspace {workspace.root} is a file, not a folder; pass the workspace folder.")
    if workspace is not None and not workspace.root.is_dir():
        raise UserError(f"the workspace {workspace.root} does not exist; create it with "
                        f"`python -m backend demo --workspace {args.workspace}` or pass an existing folder.")
    return settings, workspace


def main(argv: list[str] | None = None) -> int:
    from backend.jobs.protocol import JobContext
    from backend.train.loop import train

    try:
        settings, workspace = parse(list(sys.argv[1:] if argv is None else argv))
        try:
            train(settings, workspace)
        except OSError as exc:
            sentence = os_error_sentence(exc)
            if sentence is None:
                raise
            raise UserError(sentence) from None
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        with JobContext.from_env() as ctx:
            ctx.emit("error", message=str(exc))
            ctx.emit("end", status="failed", message=str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

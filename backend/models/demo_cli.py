"""`python -m backend demo --workspace DIR [--seed N] [--force]`: create the demo workspace (idempotent)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from backend.errors import UserError
from backend.output_guard import check_folder
from backend.workspace import Workspace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", required=True, type=Path, help="workspace folder to create or check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny models and sample dataset (default 0)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild the demo models and dataset even if the workspace exists "
                             "(LoRAs, outputs, jobs and presets are kept)")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.seed < 2 ** 31:
        raise UserError(f"--seed {args.seed} is outside 0..{2 ** 31 - 1}; give a whole number such as 0.")
    check_folder(Path(args.workspace).expanduser(), None, outside_confirmed=True)
    workspace = Workspace(args.workspace)
    if workspace.exists() and not args.force:
        print(f"Workspace {workspace.root} already exists; nothing to do (pass --force to rebuild the demo parts).")
        return 0
    from backend.models.demo import build_demo_workspace

    started = time.perf_counter()
    build_demo_workspace(workspace.root, seed=args.seed, force=args.force)
    print(f"Demo workspace ready at {workspace.root} (seed {args.seed}, built and checked in "
          f"{time.perf_counter() - started:.1f} s).")
    return 0

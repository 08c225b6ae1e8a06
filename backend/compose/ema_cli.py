"""`python -m backend ema RUN_DIR_OR_FILES --sigma_rel 0.2 --out FILE [--beta B --beta2 B2] [--uniform]
[--rule power|beta|uniform] [--space factors|delta]`: post-hoc EMA of a run's checkpoints (options: EmaSettings in
backend/compose/settings.py; the exact rules: backend/compose/ema*.py). `--config PRESET.json` runs a preset saved in
the EMA tab; flags given beside it win."""
from __future__ import annotations

import argparse
from pathlib import Path

from backend.compose.ema import post_hoc_ema
from backend.compose.output_names import check_output
from backend.compose.settings import EmaSettings, ema_from_flags
from backend.config.settings import add_setting_arguments
from backend.jobs.protocol import JobContext, every_percent


PRESET_SETTINGS = EmaSettings  # `--config PRESET.json`: a preset saved in the app (backend/config/preset_cli.py)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = EmaSettings.model_fields["inputs"]
    parser.add_argument("inputs", nargs="+", metavar=inputs.json_schema_extra["metavar"], help=inputs.description)
    # no rule and no rule values given: the rule follows from the values that are given (ema_from_flags)
    add_setting_arguments(parser, EmaSettings, [name for name in EmaSettings.model_fields if name != "inputs"],
                          rule=None, sigma_rel=None, beta=None)
    parser.add_argument("--uniform", dest="rule", action="store_const", const="uniform",
                        help="plain mean of the checkpoints (the same as --rule uniform)")


def run(args: argparse.Namespace) -> int:
    args = ema_from_flags(vars(args))
    args.check_rule()  # an out-of-range σ_rel or β is said before anything about the files
    inputs = [Path(p) for p in args.inputs]
    check_output(Path(args.out), args.overwrite, [p for p in inputs if p.is_file()], lora_output=True)
    ctx = JobContext.from_env()
    ctx.emit("start", inputs=args.inputs)
    result = post_hoc_ema(args.inputs, args.out, **args.rule_values(), space=args.space, precision=args.precision,
                          progress=every_percent(ctx, "modules" if args.space == "delta" else "tensors"))
    for note in result.notes:
        print(note if note.startswith("warning:") else f"note: {note}")
        if note.startswith("warning:"):
            ctx.emit("warning", message=note[len("warning: "):])
    rule = f"power EMA, γ = {result.gamma:.4f}" if result.gamma is not None else result.method
    print(f"{rule}, {args.space} space:")
    for path, step, weight in zip(result.files, result.steps, result.weights):
        print(f"  step {step:>8}  weight {weight:.6f}  {path}")
    if result.truncation_error:
        worst = max(result.truncation_error, key=result.truncation_error.get)
        mean = sum(result.truncation_error.values()) / len(result.truncation_error)
        print(f"relative truncation error: mean {mean:.3e}, max {result.truncation_error[worst]:.3e} ({worst})")
    print(f"wrote {result.out}")
    ctx.emit("checkpoint", path=str(result.out))
    ctx.emit("end", status="succeeded")
    ctx.close()
    return 0

"""`python -m backend blockmap`: the LORAID allocation table with capacities, the patterns of chosen IDs, the
workspace registry, and the interference report.

    python -m backend blockmap --model wan2.1-t2v-14b --blocks_per_loraid 4 --rank 32
    python -m backend blockmap --model wan2.2-t2v-a14b --expert both --loraid 3
    python -m backend blockmap --model PATH --workspace W          # owner of each ID from the registry
    python -m backend blockmap --workspace W --rescan              # rebuild the registry from W/loras
    python -m backend blockmap --report A.safetensors B.safetensors --model CHECKPOINT [--json]
"""
from __future__ import annotations

import argparse
import json
import sys

from backend.config.field_checks import checked, flag_of
from backend.config.settings import add_setting_arguments
from backend.errors import UserError, refuse_first
from backend.loraid.allocation import EXPERT_CHOICES, allocate, allocation_table, compact_ranges, describe_units
from backend.loraid.allocation_fields import AllocationValues
from backend.loraid.capacity import Capacity, capacity, human_bytes
from backend.loraid.cli_args import add_loraid_arguments, add_multiplier_argument, flatten_appended, resolve_loraids
from backend.loraid.patterns import network_args_command_line, network_args_entries, network_args_toml
from backend.loraid.report_settings import REPORT_FILE, InterferenceSettings

DEFAULT_RANK = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_setting_arguments(parser, InterferenceSettings, ["model"])  # also the allocation table's model
    parser.add_argument("--expert", choices=EXPERT_CHOICES,
                        help="Wan2.2 A14B expert(s); default both (the same slice in each expert, one file each)")
    add_loraid_arguments(parser)
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK, help=f"LoRA rank for capacities (default "
                                                                      f"{DEFAULT_RANK})")
    parser.add_argument("--workspace", help="workspace folder: show which registered file owns each ID")
    parser.add_argument("--rescan", action="store_true", help="rebuild the workspace registry from its loras/ folder")
    fields = InterferenceSettings.field_info()
    parser.add_argument("--report", nargs="+", metavar="FILE", help=fields["report"]["help"])
    add_multiplier_argument(parser, help=fields["multiplier"]["help"])
    add_setting_arguments(parser, InterferenceSettings, [name for name in fields
                                                         if name not in ("report", "model", "multiplier")])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def report_settings(args: argparse.Namespace) -> InterferenceSettings:
    """The command line's report options as settings; a wrong value is one sentence naming its flag."""
    values = {name: getattr(args, name) for name in InterferenceSettings.model_fields}
    values["multiplier"] = flatten_appended(args.multiplier)
    return checked(InterferenceSettings, values)


def _run_report(args: argparse.Namespace) -> int:
    from backend.fileio import atomic_write_text
    from backend.jobs.protocol import JobContext
    from backend.loraid.report import format_report, interference_report

    settings = report_settings(args)
    ctx = JobContext.from_env()
    ctx.emit("start", kind="interference report", files=settings.report)

    def step(done: int, total: int, what: str) -> None:
        ctx.emit("progress", step=done, total=total)
        print(f"interference: {done}/{total} {what}", file=sys.stderr, flush=True)

    report = interference_report(settings.report, settings.model, settings.multipliers(), settings.probes,
                                 device=settings.device, on_step=step)
    text = json.dumps(report, indent=2) if args.json else format_report(report)
    if ctx.job_dir is not None:
        atomic_write_text(ctx.job_dir / REPORT_FILE, text + "\n")
    print(text)
    ctx.emit("end", status="succeeded")
    ctx.close()
    return 0


def _table(args: argparse.Namespace) -> dict:
    given = AllocationValues(args.model, args.blocks_per_loraid, args.module_group_split, args.rank).check(flag_of)
    refuse_first(given.problems)
    facts, k = given.facts, given.blocks_per_loraid
    expert = args.expert if args.expert or not facts.experts else "both"
    facts.check_expert(expert)
    table = allocation_table(facts.num_blocks, k, expert, args.module_group_split, facts.name)
    registry = None
    if args.workspace:
        from backend.loraid.registry import LoraidRegistry

        registry = LoraidRegistry.for_workspace(args.workspace)
    rows = []
    for allocation in table:
        cap = capacity(facts.dims, allocation, args.rank)
        owners = [e.file for e in registry.owners(allocation)] if registry else []
        rows.append(_row(cap, owners))
    chosen = resolve_loraids(args)
    patterns = {}
    for loraid in chosen:
        allocation = allocate(loraid, facts.num_blocks, k, expert, args.module_group_split, facts.name)
        patterns[loraid] = {"network_args": network_args_entries(allocation),
                            "command_line": network_args_command_line(allocation),
                            "toml": network_args_toml(allocation),
                            "train_arguments": f"--loraid {loraid} --blocks_per_loraid {k}"
                                               + (" --module_group_split" if args.module_group_split else "")}
    warnings = [a.warning for a in table if a.warning]
    if args.rank >= facts.dims.dim:
        warnings.append(f"Rank {args.rank} is at least the model width {facts.dims.dim}: such a LoRA is no smaller "
                        f"than the weights it adapts; pick a rank well below {facts.dims.dim}.")
    return {"model": facts.label, "model_type": facts.name, "num_blocks": facts.num_blocks, "expert": expert,
            "blocks_per_loraid": k, "unit": "module groups" if args.module_group_split else "blocks",
            "rank": args.rank, "ids": rows, "patterns": patterns,
            "warnings": warnings}


def _row(cap: Capacity, owners: list[str]) -> dict:
    allocation = cap.allocation
    return {"loraid": allocation.loraid, "blocks": list(allocation.blocks), "units": describe_units(allocation),
            "modules": cap.modules, "lora_parameters": cap.lora_parameters, "files": cap.files,
            "file_bytes": cap.file_bytes, "fraction_of_allocated": cap.fraction_of_allocated,
            "fraction_of_model": cap.fraction_of_model, "owners": owners, "partial": allocation.partial}


def _format_table(data: dict) -> str:
    files = " (one file per expert: sizes are per file)" if data["expert"] == "both" else ""
    lines = [f"{data['model']}: {data['num_blocks']} blocks"
             + (f" per expert, expert {data['expert']}" if data["expert"] else "")
             + f"; {data['blocks_per_loraid']} {data['unit']} per LORAID -> {len(data['ids'])} IDs; rank {data['rank']}"
             + files, ""]
    header = f"{'ID':>3}  {'owns':<34} {'modules':>7} {'LoRA params':>12} {'fp32':>10} {'bf16/fp16':>10} " \
             f"{'of slice':>8} {'of model':>8}"
    owners = any(row["owners"] for row in data["ids"])
    lines.append(header + ("  owner" if owners else ""))
    for row in data["ids"]:
        line = (f"{row['loraid']:>3}  {row['units']:<34} {row['modules']:>7} {row['lora_parameters']:>12,} "
                f"{human_bytes(row['file_bytes']['fp32']):>10} {human_bytes(row['file_bytes']['bf16']):>10} "
                f"{row['fraction_of_allocated']:>8.2%} {row['fraction_of_model']:>8.1%}")
        if owners:
            line += "  " + (", ".join(row["owners"]) or "free")
        lines.append(line)
    lines += [f"warning: {w}" for w in data["warnings"]]
    for loraid, pattern in data["patterns"].items():
        lines += ["", f"LORAID {loraid}:", f"  this app:     {pattern['train_arguments']}",
                  f"  musubi-tuner: {pattern['command_line']}", f"  TOML:         {pattern['toml']}"]
    lines += ["", "'of slice': LoRA parameters / weights of the modules they adapt; 'of model': the slice's share of "
                  "all block Linear weights."]
    return "\n".join(lines)


def _rescan(args: argparse.Namespace) -> int:
    from backend.loraid.registry import LoraidRegistry
    from backend.workspace import Workspace

    ws = Workspace(args.workspace)
    entries = LoraidRegistry.for_workspace(ws).scan(ws.loras)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=2))
    else:
        print(f"registry {ws.loraid_registry}: {len(entries)} LORAID file(s) in {ws.loras}")
        for entry in entries:
            allocation = entry.parsed
            expert = f", expert {allocation.expert}" if allocation.expert else ""
            print(f"  LORAID {entry.loraid if entry.loraid is not None else '-'}: {entry.file} "
                  f"(blocks {compact_ranges(allocation.blocks)}{expert})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.report:
        return _run_report(args)
    if args.rescan:
        if not args.workspace:
            raise UserError("--rescan needs --workspace DIR (the workspace whose loras/ folder to scan).")
        return _rescan(args)
    if not args.model:
        raise UserError("Pass --model (a model type such as wan2.1-t2v-14b, or a checkpoint path) to see its "
                        "LORAID table, or --report FILES for an interference report.")
    data = _table(args)
    print(json.dumps(data, indent=2) if args.json else _format_table(data))
    return 0

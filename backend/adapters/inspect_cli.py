"""`python -m backend inspect FILE [--json]`: what a LoRA file holds, in one screen.

Layout (which trainer's key names the file uses; a Wan2.2 A14B expert file and its partner), algorithm, ranks (min / max / per projection), alphas, scale, flags, modules and blocks touched, LORAID and its
allocation, parameter count, file size and a summary of the musubi `ss_*` / `modelspec.*` metadata.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Iterable

from backend.adapters.formats import LoraFile, load_lora, suspicious_rslora_hint
from backend.adapters.keys import block_of
from backend.models.registry import EXPERT_STEMS, expert_in_name, expert_partner

SUMMARY_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_base_model_version",
                "ss_steps", "ss_epoch", "ss_learning_rate", "ss_seed", "ss_loraid", "loraid_allocation",
                "modelspec.title", "modelspec.architecture", "modelspec.date")


LAYOUT_WORDS = {
    "loraid_studio": "this app (musubi-tuner's `lora_unet_*` keys)",
    "musubi": "musubi-tuner / kohya `lora_unet_*` keys (LyCORIS through lycoris.kohya too)",
    "blissful": "blissful-tuner `lora_unet_*` keys with its DoRA / rsLoRA tensors",
    "lycoris": "LyCORIS `lycoris_*` keys (SimpleTuner)",
    "comfy": "ComfyUI / diffusion-pipe / ai-toolkit `diffusion_model.*` keys with Wan module names",
    "diffusers": "diffusers module names (diffusers / PEFT `transformer.*`, ai-toolkit `diffusion_model.*`)",
}


def expert_pair(lora_file: LoraFile) -> dict[str, str | None] | None:
    """A Wan2.2 A14B expert file named `NAME-high_noise` / `NAME_low_noise` (ai-toolkit): its expert and partner file."""
    if lora_file.path is None:
        return None
    name, expert = expert_in_name(lora_file.path.stem)
    if expert is None:
        return None
    partner = expert_partner(lora_file.path)
    return {"name": name, "expert": expert, "partner": str(partner) if partner else None}


def compact_ranges(numbers: Iterable[int]) -> str:
    """[0, 1, 2, 3, 8] -> "0-3,8"."""
    values = sorted(set(numbers))
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _projection(name: str) -> str:
    return name.split(".", 2)[2] if block_of(name) is not None else name


def _min_max(values: list[float]) -> dict[str, float | None]:
    return {"min": min(values) if values else None, "max": max(values) if values else None}


DORA_CONVENTION_WORDS = {"base_norm": "ComfyUI's convention (m·||W||/||W + ΔW||, per output row)",
                         "merged_norm": "magnitudes over ||W + ΔW|| (the trainer's convention)"}


def musubi_advice(lora_file: LoraFile) -> str | None:
    """What to do when musubi-tuner cannot use the file as it is (it has no DoRA and reads no LyCORIS tensors)."""
    kinds = sorted({{"dora": "DoRA", "loha": "LoHa", "lokr": "LoKr"}[algo] for algo in lora_file.module_algos.values()
                    if algo in ("dora", "loha", "lokr")})
    if not kinds:
        return None
    base = " --base DIT" if "DoRA" in kinds else ""
    return (f"musubi-tuner cannot apply {'/'.join(kinds)}; `python -m backend convert FILE OUT.safetensors --to lora "
            f"--rank R{base}` writes a plain LoRA it loads and reports the approximation error.")


def describe(lora_file: LoraFile) -> dict[str, Any]:
    """Everything `inspect` shows, as JSON-ready values."""
    ranks = [r for r in lora_file.ranks.values() if r]
    per_projection: dict[str, set] = {}
    for name, rank in lora_file.ranks.items():
        per_projection.setdefault(_projection(name), set()).add(rank if rank else "full")
    alphas = list(lora_file.alphas.values())
    md = lora_file.metadata
    return {
        "file": str(lora_file.path) if lora_file.path else None,
        "file_size": lora_file.file_size,
        "source_format": lora_file.source_format,
        "layout": LAYOUT_WORDS.get(lora_file.source_format, lora_file.source_format),
        "expert_pair": expert_pair(lora_file),
        "algo": lora_file.algo,
        "algos_per_module": sorted(set(lora_file.module_algos.values())),
        "flags": {key: value for key, value in lora_file.flags.items() if isinstance(value, bool)},
        "modules": len(lora_file.modules),
        "blocks": lora_file.blocks,
        "blocks_compact": compact_ranges(lora_file.blocks),
        "top_level_modules": [name for name in lora_file.modules if block_of(name) is None],
        "ranks": {**_min_max(ranks),
                  "per_projection": {key: sorted(v, key=str) for key, v in per_projection.items()}},
        "alphas": {**_min_max(alphas), "values": sorted(set(alphas))},
        "scales": _min_max(list(lora_file.scales.values())),
        "parameter_count": lora_file.parameter_count,
        "loraid": lora_file.info["loraid"],
        "allocation": lora_file.info["allocation"],
        "network_args": lora_file.info["network_args"],
        "metadata": {key: md[key] for key in SUMMARY_KEYS if key in md},
        "metadata_keys": len(md),
        "notes": list(lora_file.notes) + ([f"{len(lora_file.nonfinite)} tensors hold NaN or infinite values (first: "
                                            f"{lora_file.nonfinite[0]}); merge, convert and generate refuse this file"]
                                           if lora_file.nonfinite else []),
        "nonfinite_tensors": list(lora_file.nonfinite),
        "hint": suspicious_rslora_hint(lora_file),
        "dora_convention": lora_file.flags.get("dora_convention"),
        "dora_base": (lora_file.flags.get("dora_base") or {}).get("sha256"),
        "musubi": musubi_advice(lora_file),
    }


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _span(pair: dict[str, float | None]) -> str:
    low, high = pair["min"], pair["max"]
    return _number(low) if low == high else f"{_number(low)} .. {_number(high)}"


def format_text(info: dict[str, Any]) -> str:
    flags = " ".join(f"{key}={value}" for key, value in info["flags"].items())
    blocks = f"blocks {info['blocks_compact']}" if info["blocks"] else "no blocks"
    top = f" + {', '.join(info['top_level_modules'])}" if info["top_level_modules"] else ""
    lines = [
        f"file         {info['file']} ({info['file_size']:,} bytes)" if info["file_size"] else f"file         {info['file']}",
        f"layout       {info['source_format']}: {info['layout']}",
        f"algorithm    {info['algo']}",
        f"flags        {flags}",
        f"modules      {info['modules']} in {blocks}{top}",
        f"ranks        {_span(info['ranks'])}",
    ]
    lines += [f"  {name:<18} {', '.join(map(str, ranks))}" for name, ranks in info["ranks"]["per_projection"].items()]
    lines += [
        f"alphas       {_span(info['alphas'])}",
        f"scale        {_span(info['scales'])}  (alpha / rank)",
        f"parameters   {info['parameter_count']:,}",
        f"LORAID       {info['loraid'] if info['loraid'] is not None else '-'}",
    ]
    if info["allocation"] is not None:
        lines.append(f"allocation   {json.dumps(info['allocation'], sort_keys=True)}")
    if info["network_args"]:
        lines.append(f"network_args {' '.join(info['network_args'])}")
    lines.append(f"metadata     {info['metadata_keys']} keys")
    lines += [f"  {key:<22} {value[:120]}" for key, value in info["metadata"].items()]
    pair = info["expert_pair"]
    if pair:
        partner = (f"with its partner {pair['partner']}" if pair["partner"]
                   else "its partner file for the other expert is not beside it")
        lines.append(f"A14B pair    {pair['name']}: the {EXPERT_STEMS[pair['expert']].replace('_', '-')} expert, "
                     f"{partner}")
    lines += [f"note         {note}" for note in info["notes"]]
    if info["dora_convention"]:
        base = f", computed on base {info['dora_base']}" if info["dora_base"] else ""
        lines.append(f"DoRA scales  {DORA_CONVENTION_WORDS.get(info['dora_convention'], info['dora_convention'])}{base}")
    if info["hint"]:
        lines.append(f"hint         {info['hint']}")
    if info["musubi"]:
        lines.append(f"musubi       {info['musubi']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a LoRA / LoCon / DoRA / LoHa / LoKr .safetensors file (any supported layout)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from backend.moe import files as moe_files

    if moe_files.is_moe_file(args.file):  # experts + router + gate: described by backend/moe
        info = moe_files.describe(moe_files.load_moe(args.file))
        print(json.dumps(info, indent=2) if args.json else moe_files.format_text(info))
        return 0
    info = describe(load_lora(args.file, allow_nonfinite=True))
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0

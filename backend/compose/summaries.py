"""What a composed file says about how it was made, read back from its safetensors header (never re-derived):
a merged DiT or merged LoRA (`loraid_studio.merge`) and a post-hoc EMA LoRA (`loraid_studio.ema`)."""
from __future__ import annotations

import json
from pathlib import Path

from backend.compose.ema_inputs import EMA_KEY
from backend.compose.provenance import MERGE_KEY, MERGED_LORAIDS_KEY
from backend.errors import UserError
from backend.loraid.capacity import human_bytes
from backend.models.checkpoint import read_safetensors_header


def _record(path: Path, key: str, what: str) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; the job did not write it, so read the job's log.")
    _, metadata = read_safetensors_header(path)
    if key not in metadata:
        raise UserError(f"{path.name} holds no {what} record; it was not written by this app's {what}.")
    return json.loads(metadata[key]), metadata


def _output_line(path: Path) -> str:
    return f"Output: {path} ({human_bytes(path.stat().st_size)})"


def _lora_line(record: dict) -> str:
    loraid = f"LORAID {record['loraid']}" if record.get("loraid") is not None else "no LORAID"
    strength = f" × {record['multiplier']:g}" if record.get("multiplier") is not None else ""
    digest = f", sha256 {record['sha256'][:12]}…" if record.get("sha256") else ""
    return f"{record['file']}{strength}: {loraid}, {record['algo']}, {record['modules']} modules{digest}"


def merge_summary(path: Path) -> list[str]:
    """Lines describing a merged DiT or merged LoRA: what went in, at which strength, the LORAIDs, the output."""
    record, metadata = _record(path, MERGE_KEY, "merge")
    loras = record.get("loras", [])
    loraids = json.loads(metadata.get(MERGED_LORAIDS_KEY, "[]"))
    if "base" in record:
        expert = f" ({record['expert']}-noise expert)" if record.get("expert") else ""
        dtype = "as in the base" if record.get("dtype") in (None, "same") else record["dtype"]
        head = f"Merged {len(loras)} LoRA{'s' * (len(loras) != 1)} into {record['base']}{expert}, dtype {dtype}"
    else:
        how = "exact (ranks concatenated)" if record.get("method") == "concat" else f"SVD to rank {record['rank']}"
        head = f"Merged {len(loras)} LoRAs into one LoRA, {how}"
    if record.get("allow_overlap"):
        head += "; overlapping LoRAs were allowed"
    lines = [head + ":", *(_lora_line(lora) for lora in loras)]
    lines.append(f"LORAIDs: {', '.join(map(str, loraids))}" if loraids else "LORAIDs: none recorded")
    return lines + [_output_line(Path(path))]


def ema_summary(path: Path) -> list[str]:
    """Lines describing a post-hoc EMA LoRA: the rule, each checkpoint's step and weight, the truncation error."""
    record, _ = _record(path, EMA_KEY, "post-hoc EMA")
    method = record["method"]
    if method == "power":
        rule = f"power EMA, σ_rel {record['sigma_rel']:g} (γ = {record['gamma']:.4f})"
    elif method == "beta":
        beta2 = record["beta2"] if record.get("beta2") is not None else record["beta"]
        rule = f"beta EMA, β {record['beta']:g} → {beta2:g}"
    else:
        rule = "plain mean"
    checkpoints = record["checkpoints"]
    lines = [f"Post-hoc EMA of {len(checkpoints)} checkpoints: {rule}, {record['space']} space, steps from "
             f"{record['steps_from']}:"]
    lines += [f"step {c['step']}: weight {c['weight']:.6f} ({c['file']})" for c in checkpoints]
    if record.get("truncation_error_max") is not None:
        lines.append(f"Largest relative truncation error of the re-factorized ΔW: {record['truncation_error_max']:.3e}")
    return lines + [_output_line(Path(path))]

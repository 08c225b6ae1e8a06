"""Safetensors header metadata of LoRA files: musubi's `ss_*`, `modelspec.*`, and ours (`loraid_studio.*`, `ss_loraid`).

Header values are strings. `build_metadata` writes what musubi-tuner and model browsers read plus what this app needs
to resume, merge and allocate; `parse_metadata` reads it back from any file, tolerating whatever other tools wrote.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from backend.errors import UserError

OURS = "loraid_studio."
FORMAT_VERSION = "1"
LYCORIS_ALGOS = ("loha", "lokr")
WAN_IMPLEMENTATION = "https://github.com/Wan-Video/Wan2.1"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "none")


def network_args_list(network_args: Iterable[str] | Mapping[str, Any] | None) -> list[str]:
    """`{"use_dora": True}` or `["use_dora=True"]` -> `["use_dora=True"]` (the form users write)."""
    if network_args is None:
        return []
    if isinstance(network_args, Mapping):
        return [f"{key}={value}" for key, value in network_args.items()]
    items = [network_args] if isinstance(network_args, str) else list(network_args)
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise UserError(f"The network argument `{item}` is not of the form key=value (e.g. use_dora=True).")
    return items


def network_args_dict(network_args: Iterable[str] | Mapping[str, Any] | None) -> dict[str, str]:
    """musubi's `ss_network_args` shape: key -> value string; a value may itself contain `=`."""
    return dict(item.split("=", 1) for item in network_args_list(network_args))


def _format_alpha(alpha: float) -> str:
    return repr(float(alpha))


def build_metadata(algo: str, rank: int, alpha: float, network_args: Iterable[str] | Mapping[str, Any] | None,
                   flags: Mapping[str, bool] | None, base_model: str | None, loraid: int | None = None,
                   allocation: Mapping[str, Any] | None = None, step: int | None = None, epoch: int | None = None,
                   extra: Mapping[str, Any] | None = None, title: str | None = None) -> dict[str, str]:
    """Header metadata for a LoRA file: musubi `ss_*`, `modelspec.*` and ours. `extra` adds more keys (e.g.
    `ss_learning_rate`, `ss_seed`); non-string values are written as JSON."""
    algo = algo.lower()
    flags = dict(flags or {})
    args = network_args_list(network_args)
    ss_args = network_args_dict(args)
    if algo in LYCORIS_ALGOS:
        ss_args.setdefault("algo", algo)
    architecture = base_model or "wan"
    md: dict[str, str] = {
        "ss_network_module": "lycoris.kohya" if algo in LYCORIS_ALGOS else "networks.lora_wan",
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": _format_alpha(alpha),
        "ss_network_args": json.dumps(ss_args),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.implementation": WAN_IMPLEMENTATION,
        "modelspec.title": title or "LoRA",
        "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        OURS + "version": FORMAT_VERSION,
        OURS + "algo": algo,
        OURS + "use_rslora": "true" if flags.get("use_rslora") else "false",
        OURS + "use_dora": "true" if flags.get("use_dora") else "false",
        OURS + "network_args": json.dumps(args),
    }
    if flags.get("use_dora") and flags.get("dora_convention"):
        md[OURS + "dora_convention"] = str(flags["dora_convention"])
        if flags.get("dora_base"):
            md[OURS + "dora_base"] = json.dumps(flags["dora_base"], sort_keys=True)
    if base_model:
        md["ss_base_model_version"] = base_model
    if step is not None:
        md["ss_steps"] = md[OURS + "step"] = str(int(step))
    if epoch is not None:
        md["ss_epoch"] = md[OURS + "epoch"] = str(int(epoch))
    if loraid is not None:
        md["ss_loraid"] = str(int(loraid))
    if allocation is not None:
        md["loraid_allocation"] = json.dumps(dict(allocation), sort_keys=True)
    for key, value in (extra or {}).items():
        md[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return md


def parse_bool(text: str | None) -> bool | None:
    if text is None:
        return None
    lowered = str(text).strip().lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip()) if text is not None else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        value = float(str(text).strip()) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None


def _parse_network_args(md: Mapping[str, str]) -> list[str]:
    ours = _json(md.get(OURS + "network_args"))
    if isinstance(ours, list) and all(isinstance(item, str) for item in ours):
        return ours
    theirs = _json(md.get("ss_network_args"))
    if isinstance(theirs, dict):
        return [f"{key}={value}" for key, value in theirs.items()]
    if isinstance(theirs, list):
        return [str(item) for item in theirs]
    return []


def parse_metadata(md: Mapping[str, str] | None) -> dict[str, Any]:
    """What a file's header says, as Python values; anything missing or unreadable is None."""
    md = dict(md or {})
    network_args = _parse_network_args(md)
    args = dict(item.split("=", 1) for item in network_args if "=" in item)
    ours = OURS + "version" in md
    flags = {}
    for flag in ("use_rslora", "use_dora"):
        value = parse_bool(md.get(OURS + flag)) if ours else None
        flags[flag] = value if value is not None else parse_bool(args.get(flag))
    allocation = _json(md.get("loraid_allocation"))
    return {
        "ours": ours,
        "algo": md.get(OURS + "algo") or (args.get("algo") or None),
        "rank": _int(md.get("ss_network_dim")),
        "alpha": _float(md.get("ss_network_alpha")),
        "network_module": md.get("ss_network_module"),
        "network_args": network_args,
        "flags": flags,
        "base_model": md.get("ss_base_model_version"),
        "architecture": md.get("modelspec.architecture"),
        "title": md.get("modelspec.title"),
        "loraid": _int(md.get("ss_loraid")),
        "allocation": allocation if isinstance(allocation, dict) else None,
        "step": _int(md.get(OURS + "step", md.get("ss_steps"))),
        "epoch": _int(md.get(OURS + "epoch", md.get("ss_epoch"))),
        "learning_rate": _float(md.get("ss_learning_rate")),
        "seed": _int(md.get("ss_seed")),
        "dora_convention": md.get(OURS + "dora_convention"),
        "dora_base": _json(md.get(OURS + "dora_base")),
    }

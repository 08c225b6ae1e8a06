"""Training state on disk without pickle: tensors in safetensors, structure in JSON.

A `*-state/` folder holds `state.safetensors` (optimizer tensors, RNG states) and `state.json` (optimizer param
groups and scalars, scheduler state, step, epoch, data position, settings fingerprint). Written into a temp folder
and renamed, so a crash mid-save leaves the previous state intact.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from backend.errors import UserError

_TUPLE = "__tuple__"


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return {_TUPLE: [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return {"__scalar_tensor__": value.item(), "dtype": str(value.dtype).removeprefix("torch.")}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if _TUPLE in value:
            return tuple(_from_json(v) for v in value[_TUPLE])
        if "__scalar_tensor__" in value:
            return torch.tensor(value["__scalar_tensor__"], dtype=getattr(torch, value["dtype"]))
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer.state_dict() -> (tensors for safetensors, JSON-able rest). Scalar tensors (e.g. `step`) go to JSON."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict] = {}
    for index, entries in state_dict["state"].items():
        scalars = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[name] = _to_json(value)
        per_param[str(index)] = scalars
    return tensors, {"state": per_param, "param_groups": _to_json(state_dict["param_groups"])}


def join_optimizer_state(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    state: dict[int, dict] = {int(i): _from_json(scalars) for i, scalars in structure["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": _from_json(structure["param_groups"])}


def save_training_state(folder: Path, *, optimizer, scheduler, step: int, epoch: int, data_position: dict,
                        generators: dict[str, torch.Generator], fingerprint: dict, extra_tensors=None) -> Path:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors, optimizer_structure = split_optimizer_state(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    for name, generator in generators.items():
        tensors[f"rng.generator.{name}"] = generator.get_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    tensors.update(extra_tensors or {})
    save_file(tensors, str(tmp / "state.safetensors"))
    doc = {"step": step, "epoch": epoch, "data_position": data_position, "optimizer": optimizer_structure,
           "scheduler": _to_json(scheduler.state_dict()), "fingerprint": fingerprint}
    (tmp / "state.json").write_text(json.dumps(doc, indent=1))
    for name in ("state.safetensors", "state.json"):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_training_state(folder: Path, *, optimizer, scheduler, generators: dict[str, torch.Generator],
                        fingerprint: dict) -> dict:
    folder = Path(folder)
    replaced = folder.with_name(folder.name + ".old")
    if not folder.exists() and replaced.is_dir():  # a save was killed between moving it aside and renaming the new
        os.replace(replaced, folder)
    if folder.name.endswith((".tmp", ".old")):
        raise UserError(f"{folder.name} is a state folder left by an interrupted save; resume from the folder of the "
                        f"same name without {folder.suffix}.")
    if not (folder / "state.json").is_file() or not (folder / "state.safetensors").is_file():
        raise UserError(f"{folder} is not a training state folder (state.json + state.safetensors); "
                        "pass a *-state folder written with save_state.")
    doc = json.loads((folder / "state.json").read_text())
    mismatched = sorted(k for k in fingerprint if doc["fingerprint"].get(k) != fingerprint[k])
    if mismatched:
        key = mismatched[0]
        raise UserError(f"cannot resume from {folder.name}: it was trained with {key}={doc['fingerprint'].get(key)!r} "
                        f"but this run has {key}={fingerprint[key]!r}; use the same setting or start a new run.")
    tensors = load_file(str(folder / "state.safetensors"))
    optimizer.load_state_dict(join_optimizer_state(tensors, doc["optimizer"]))
    scheduler.load_state_dict(_from_json(doc["scheduler"]))
    torch.set_rng_state(tensors["rng.torch"])
    for name, generator in generators.items():
        generator.set_state(tensors[f"rng.generator.{name}"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    doc["tensors"] = {k: v for k, v in tensors.items() if not k.startswith(("optimizer.", "rng."))}
    return doc

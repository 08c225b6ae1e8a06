"""The LoRA files a user picked: names from the workspace's loras/ folder plus typed paths (one per line,
relative to the workspace), each checked to be an existing .safetensors file."""
from __future__ import annotations

from pathlib import Path

from backend.errors import UserError
from backend.workspace import Workspace


def lora_names(workspace: Workspace) -> list[str]:
    """The .safetensors files in the workspace's loras/ folder, by name."""
    folder = workspace.loras
    return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def resolve_lora_paths(workspace: Workspace, names: list[str] | None, typed: str | None) -> list[Path]:
    """The picked files as absolute paths, each once, in order; a missing or non-.safetensors file is one
    sentence."""
    paths = [workspace.loras / name for name in names or []]
    for line in (typed or "").splitlines():
        text = line.strip().strip('"')
        if text:
            path = Path(text).expanduser()
            paths.append(path if path.is_absolute() else workspace.root / path)
    for path in paths:
        if not path.is_file():
            raise UserError(f"The LoRA file {path} does not exist; pick a file from the list or check the path.")
        if path.suffix != ".safetensors":
            raise UserError(f"{path.name} is not a .safetensors file; LoRA files are read from .safetensors only.")
    return list(dict.fromkeys(p.resolve() for p in paths))

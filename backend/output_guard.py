"""Where an output may be written: one check for every surface (command line, the app's forms, presets), made in the
backend before anything is written.

1. A name is a name: no path separator, no `..`, nothing Windows or ComfyUI refuse (`<>:"/\\|?*`, control
   characters, a trailing dot or space, device names such as CON or LPT1), at most 120 characters.
2. An output never lands on what the user has: an input of the job, a model under the workspace's models/, a
   dataset or its caches under datasets/, a preset, a job record, the LORAID registry, or (for a LoRA) a file that
   is not a LoRA.
3. A relative path stays inside the folder it is taken from (`../` may not climb out); an absolute path outside the
   workspace is taken only when the user confirmed it (on the command line, typing it is the confirmation).
4. An existing output is replaced only when overwriting was asked; `free_name` gives the next free `-2` name.

`output_message(...)` answers the same questions for one form field as a sentence (or None when it is fine), so the
app can show it beside the field while the user types.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from backend.errors import UserError
from backend.workspace import Workspace

MAX_NAME = 120
_FORBIDDEN = set('<>:"/\\|?*')
_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
LORA_KEY_MARKS = ("lora_down", "lora_up", "lora_A", "lora_B", "hada_w", "lokr_w", "dora_scale", ".diff")


def name_problem(name: str, what: str = "The output name") -> str | None:
    """One sentence saying why `name` cannot be a file name on every system the file may travel to, else None."""
    if not name or not name.strip():
        return f"{what} is empty; type a name such as my-lora."
    bad = sorted({char for char in name if char in _FORBIDDEN or ord(char) < 32})
    if bad:
        shown = " ".join(repr(char)[1:-1] if ord(char) < 32 else char for char in bad)
        return f"{what} `{name}` contains {shown}; a name cannot hold path separators or any of < > : \" / \\ | ? *."
    if ".." in name:
        return f"{what} `{name}` contains `..`; type a plain name (choose the folder in the folder field)."
    if name != name.strip() or name.endswith("."):
        return f"{what} `{name}` starts or ends with a space or ends with a dot, which Windows drops; remove it."
    if name.split(".")[0].upper() in _DEVICE_NAMES:
        return f"{what} `{name}` is a device name on Windows; choose another name."
    if len(name) > MAX_NAME:
        return f"{what} is {len(name)} characters long; keep it to {MAX_NAME} or fewer."
    return None


def check_name(name: str, what: str = "The output name") -> str:
    problem = name_problem(name, what)
    if problem:
        raise UserError(problem)
    return name


def free_name(folder: Path, name: str, suffixes: Sequence[str] = (".safetensors",)) -> str:
    """`name`, or `name-2`, `name-3`, ... when a file `name<suffix>` exists in `folder` for some suffix."""
    candidate, number = name, 1
    while any((Path(folder) / f"{candidate}{suffix}").exists() for suffix in suffixes):
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def typed_path(typed: str, base: Path, what: str = "The output") -> Path:
    """The absolute path of what the user typed: relative paths start at `base` and may not climb out of it."""
    text = (typed or "").strip().strip('"').strip("'")
    if not text:
        raise UserError(f"{what} is empty; type a path.")
    path = Path(text).expanduser()
    if path.is_absolute():
        return path.resolve()
    resolved = (Path(base) / path).resolve()
    if not _inside(resolved, Path(base).resolve()):
        raise UserError(f"{what} `{text}` climbs out of {base} with `..`; type an absolute path if you mean a "
                        "place outside it.")
    return resolved


def protected_reason(path: Path, workspace: Workspace | None, inputs: Iterable[Path] = (),
                     lora_output: bool = False) -> str | None:
    """Why writing `path` would destroy something the user has (None when it would not)."""
    path = Path(path).resolve()
    for given in inputs:
        if given and Path(given).resolve() == path:
            return f"{path.name} is one of the inputs"
    if workspace is not None:
        owned = ((workspace.models, "a model in the workspace's models folder"),
                 (workspace.datasets, "part of a dataset (or its cache) in the workspace's datasets folder"),
                 (workspace.presets, "a preset"), (workspace.jobs, "a job record"))
        for folder, what in owned:
            if _inside(path, folder.resolve()) and path.exists():
                return f"{path.name} is {what}"
        if path in (workspace.loraid_registry.resolve(), workspace.marker.resolve()):
            return f"{path.name} is the workspace's own record"
    if lora_output and path.is_file() and path.suffix == ".safetensors" and _is_lora(path) is False:
        return f"{path.name} is a model checkpoint, not a LoRA"
    return None


def check_output_file(path: Path, *, workspace: Workspace | None, inputs: Iterable[Path] = (),
                      overwrite: bool = False, outside_confirmed: bool = True, lora_output: bool = False,
                      suffix: str | None = ".safetensors", command_line: bool = True) -> Path:
    """Raise a UserError unless `path` may be written; returns it resolved (`command_line`: the message may name the
    command line's flag too; a form's message names its own controls only)."""
    path = Path(path)
    if suffix and path.suffix.lower() != suffix:
        raise UserError(f"The output {path.name} must end in {suffix}; add it to the name.")
    problem = name_problem(path.stem, "The output file name")
    if problem:
        raise UserError(problem)
    path = path.resolve()
    if path.is_dir():
        raise UserError(f"The output {path} is a folder; type a file name ending in {suffix or 'its extension'}.")
    check_folder(path.parent, workspace, outside_confirmed, creating=True)
    reason = protected_reason(path, workspace, inputs, lora_output)
    if reason:
        raise UserError(f"{reason}, so it cannot be the output; write the result under a new name.")
    if path.exists() and not overwrite:
        free = free_name(path.parent, path.stem, (path.suffix,))
        flag = " (--overwrite on the command line)" if command_line else ""
        raise UserError(f"{path} already exists; type another output name or tick “Overwrite”{flag}; "
                        f"{free}{path.suffix} is free.")
    return path


def check_folder(folder: Path, workspace: Workspace | None, outside_confirmed: bool, creating: bool = True) -> None:
    """An output folder: not a file, under an existing folder, inside the workspace unless confirmed."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"{existing} is a file, not a folder; choose a folder for the output.")
    if str(folder.resolve()).startswith(("/proc", "/sys", "/dev")):
        raise UserError(f"{folder} is a system folder; choose a folder in your workspace or home folder.")
    if workspace is not None and not outside_confirmed and not _inside(folder.resolve(), workspace.root):
        raise UserError(f"{folder} is outside the workspace {workspace.root}; confirm writing there, or choose a "
                        "folder inside the workspace.")


def output_message(typed: str, *, workspace: Workspace | None, base: Path | None = None,
                   inputs: Iterable[Path] = (), overwrite: bool = False, outside_confirmed: bool = False,
                   lora_output: bool = False, suffix: str | None = ".safetensors") -> str | None:
    """For a form field holding an output file path: the sentence to show beside it, or None when it may be written.
    Absolute paths outside the workspace need `outside_confirmed`; relative ones start at `base` (the workspace)."""
    try:
        root = base or (workspace.root if workspace is not None else Path.cwd())
        path = typed_path(typed, root, "The output path")
        check_output_file(path, workspace=workspace, inputs=inputs, overwrite=overwrite,
                          outside_confirmed=outside_confirmed, lora_output=lora_output, suffix=suffix,
                          command_line=False)
    except UserError as exc:
        return str(exc)
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _is_lora(path: Path) -> bool | None:
    """Whether a .safetensors file holds adapter factors (its header names them); None when it is no readable
    safetensors file."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100_000_000:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    tensors = [key for key in header if key != "__metadata__"]
    return not tensors or any(mark in key for key in tensors for mark in LORA_KEY_MARKS)


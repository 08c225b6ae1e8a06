"""A training run's outputs: the check made before a run starts (in the Train tab, for presets and in the trainer)
and the reservation of the output name while the run writes it.

The run writes `<output_name>[-high_noise|-low_noise].safetensors` and its `-stepNNNNNN` / `-epochNNNNNN`
checkpoints into the output folder (backend/train/saving.py). Before it starts: the name must be a name, the folder
a folder that may be written (backend/output_guard.py), no input or model may be replaced, and an earlier run's files
of that name are kept unless `overwrite_output` is set (a resumed run may go on writing its own checkpoints).

While it runs, `<folder>/.<output_name>.running.json` holds its process id and its LORAID slice: a second run of
that name in that folder is refused, and the LORAID checks count the slice as taken. A reservation whose process
has ended (a crash, kill -9) is stale and is taken over.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from backend.errors import UserError, refuse_first
from backend.fileio import atomic_write_json
from backend.jobs.processes import ProcessRef
from backend.loraid.allocation import Allocation
from backend.loraid.registry import collides
from backend.models.registry import EXPERT_STEMS
from backend.output_guard import check_folder, name_problem, protected_reason, free_name
from backend.train.paths import output_folder, resolve_path
from backend.workspace import Workspace

RESERVATION_SUFFIX = ".running.json"
VARIANTS = ("", *(f"-{stem}" for stem in EXPERT_STEMS.values()))


def reservation_path(folder: Path, output_name: str) -> Path:
    return Path(folder) / f".{output_name}{RESERVATION_SUFFIX}"


def final_files(folder: Path, output_name: str) -> list[Path]:
    return [Path(folder) / f"{output_name}{variant}.safetensors" for variant in VARIANTS]


def earlier_files(folder: Path, output_name: str) -> list[Path]:
    """Files of an earlier run with this name: the final LoRA(s) and its step / epoch checkpoints."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(output_name)}(-(step|epoch)\d{{6}})?(-({'|'.join(EXPERT_STEMS.values())}))?"
                         r"\.safetensors$")
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


def output_problems(s, workspace: Workspace | None, outside_confirmed: bool = True) -> dict[str, str]:
    """field -> one sentence, for the output settings of a run (empty when it may start). A form passes
    `outside_confirmed=False` until the user confirmed an output folder outside the workspace (the command line
    and a started run take a typed absolute folder as confirmed)."""
    problem = name_problem(s.output_name, "The output name")
    if problem:
        return {"output_name": problem}
    raw = s.output_dir
    if raw and "{workspace}" not in raw and not Path(raw).expanduser().is_absolute() and ".." in Path(raw).parts:
        base = workspace.root if workspace is not None else Path.cwd()
        if base.resolve() not in Path(resolve_path(raw, workspace)).parents:
            return {"output_dir": f"The output folder `{raw}` climbs out of {base} with `..`; type an absolute path "
                                  "if you mean a place outside it."}
    try:
        folder = output_folder(_resolved_dir(s, workspace), workspace)
        check_folder(folder, workspace, outside_confirmed=outside_confirmed)
    except UserError as exc:
        return {"output_dir": str(exc)}
    inputs = [Path(resolve_path(value, workspace)) for value in (s.dit, s.dit_high_noise, s.network_weights) if value]
    for path in final_files(folder, s.output_name):
        reason = protected_reason(path, workspace, inputs, lora_output=True)
        if reason:
            return {"output_name": f"{reason}, so the run cannot write {path.name}; choose another output name or "
                                   "folder."}
    holder = running_holder(folder, s.output_name)
    if holder:
        return {"output_name": f"Another run (process {holder}) is writing {s.output_name} in {folder}; wait for it "
                               "to end or choose another output name."}
    existing = [p for p in final_files(folder, s.output_name) if p.exists()] if s.resume else \
        earlier_files(folder, s.output_name)
    if existing and not s.overwrite_output:
        free = free_name(folder, s.output_name, [f"{v}.safetensors" for v in VARIANTS])
        return {"output_name": f"{existing[0].name} already exists in {folder}; choose another name (e.g. {free}) or "
                               "tick Overwrite existing output."}
    return {}


def check_outputs(s, workspace: Workspace | None) -> None:
    refuse_first(output_problems(s, workspace))


def _resolved_dir(s, workspace: Workspace | None):
    return s.model_copy(update={"output_dir": resolve_path(s.output_dir, workspace)}) if s.output_dir else s


# --- the reservation of a running run --------------------------------------------------------------------------
def running_holder(folder: Path, output_name: str) -> int | None:
    """The process id of a live run writing `output_name` in `folder`, else None (stale reservations ignored)."""
    record = _read(reservation_path(folder, output_name))
    return record["pid"] if record and _alive(record) else None


def running_allocations(folders: list[Path]) -> list[tuple[str, Allocation]]:
    """(output name, slice) of every live run writing into these folders with a LORAID."""
    found = []
    for folder in {Path(f).resolve() for f in folders if Path(f).is_dir()}:
        for path in folder.glob(f".*{RESERVATION_SUFFIX}"):
            record = _read(path)
            if record and record.get("allocation") and _alive(record):
                found.append((record["output_name"], Allocation.from_metadata(record["allocation"],
                                                                              record.get("loraid"))))
    return found


def running_owners(allocation: Allocation, folders: list[Path]) -> list[str]:
    """Labels of the live runs (writing into these folders) whose LORAID slice overlaps `allocation`: the slice is
    taken while they run, before their file reaches the registry."""
    return [f"{name} (training now)" for name, other in running_allocations(folders) if collides(allocation, other)]


class Reservation:
    """Holds `.<output_name>.running.json` for the life of a run (a context manager)."""

    def __init__(self, folder: Path, output_name: str, allocation: Allocation | None) -> None:
        self.path = reservation_path(folder, output_name)
        self.output_name, self.allocation = output_name, allocation

    def __enter__(self) -> "Reservation":
        holder = running_holder(self.path.parent, self.output_name)
        if holder is not None and holder != os.getpid():
            raise UserError(f"Another run (process {holder}) is writing {self.output_name} in {self.path.parent}; "
                            "wait for it to end or choose another output name.")
        ref = ProcessRef.of(os.getpid())
        atomic_write_json(self.path, {"pid": os.getpid(), "create_time": ref.create_time if ref else None,
                                      "output_name": self.output_name,
                                      "loraid": self.allocation.loraid if self.allocation else None,
                                      "allocation": self.allocation.to_metadata() if self.allocation else None})
        return self

    def __exit__(self, *exc: object) -> None:
        record = _read(self.path)
        if record and record.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive(record: dict) -> bool:
    ref = ProcessRef.of(record["pid"])
    if ref is None:
        return False
    return record.get("create_time") is None or ref.create_time is None or \
        abs(ref.create_time - record["create_time"]) < 1.0

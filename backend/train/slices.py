"""Parallel LORAID slices: one submission trains LORAIDs i₁..i_K side by side, then optionally merges them all.

LORAID slices own disjoint blocks, so they train independently. Each slice is an ordinary training job (the run
settings with `loraid = i` and output name `<name>-loraid<i>`), pinned to one device slot of the job runner
(backend/jobs/manager.py): GPU slot "g" runs its command with CUDA_VISIBLE_DEVICES=g and holds that GPU alone, so
K slices on K GPUs run at the same time and more slices than GPUs queue per GPU. Without CUDA the slots are CPU
slots ("cpu0", "cpu1", ...; the GPUs hidden): the slices still run at once, as separate processes. With a merge
output, a `python -m backend merge` job waits for every slice (it is cancelled if one does not succeed) and folds
all slice files into the base DiT.

`python -m backend slices --config RUN.toml --workspace W --loraids 1 2 [--gpus 0 1] [--merge OUT.safetensors]`
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.compose.settings import MergeSettings
from backend.errors import UserError
from backend.models.registry import get_model_kind
from backend.train.command import train_argv, write_run_config
from backend.train.paths import dit_path, output_folder, resolve_settings
from backend.workspace import Workspace

TRAIN_KIND = "train"
MERGE_KIND = "merge"


@dataclass(frozen=True)
class SlicePlan:
    loraid: int
    device: str  # the job runner's slot: a CUDA index, or "cpuN"
    settings: object

    @property
    def visible_devices(self) -> str:
        """CUDA_VISIBLE_DEVICES of the slice's process ("" hides every GPU from a CPU slot)."""
        return "" if self.device.startswith("cpu") else self.device

    @property
    def title(self) -> str:
        where = f"GPU {self.device}" if not self.device.startswith("cpu") else f"CPU slot {self.device[3:]}"
        return f"LORAID {self.loraid} slice of {self.settings.output_name.rsplit('-loraid', 1)[0]} on {where}"


def default_devices(count: int) -> list[str]:
    """Every CUDA device; without CUDA one CPU slot per slice."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(index) for index in range(gpus)] if gpus else [f"cpu{index}" for index in range(count)]


def plan_slices(settings, loraids: list[int], devices: list[str]) -> list[SlicePlan]:
    """Slice k goes to devices[k mod len(devices)] (the runner queues a second slice on a busy GPU)."""
    if not loraids:
        raise UserError("no LORAIDs given; pass --loraids 1 2 ... (one slice each).")
    if len(set(loraids)) != len(loraids):
        raise UserError(f"LORAIDs {loraids} repeat an ID; each slice trains a different LORAID.")
    if not devices:
        raise UserError("no devices given; pass --gpus 0 1 ... or leave it out to use every GPU.")
    plans = []
    for index, loraid in enumerate(loraids):
        name = f"{settings.output_name}-loraid{loraid}"
        slice_settings = settings.with_overrides({"loraid": loraid, "output_name": name})
        plans.append(SlicePlan(loraid, devices[index % len(devices)], slice_settings))
    return plans


def merge_argv(plans: list[SlicePlan], workspace: Workspace, out: str, python: str = sys.executable) -> list[str]:
    """`python -m backend merge --dit BASE --lora slice files... --out OUT` (one transformer: not A14B `both`)."""
    first = resolve_settings(plans[0].settings, workspace)
    kind = get_model_kind(first.model_kind)
    if kind.has_experts and first.expert == "both":
        raise UserError("merging slices of both A14B experts is not offered in one job; train expert=high or "
                        "expert=low slices, or merge each expert with `python -m backend merge` afterwards.")
    base = dit_path(first, kind, first.expert if kind.has_experts else None, workspace)
    loras = [str(output_folder(resolve_settings(plan.settings, workspace), workspace) /
                 f"{plan.settings.output_name}.safetensors") for plan in plans]
    target = Path(out) if Path(out).is_absolute() else workspace.root / out
    merge = MergeSettings(dit=str(base), lora=loras, out=str(target))
    return [python, "-m", "backend", "merge", *merge.flag_arguments()]


def submit_slices(manager, settings, workspace: Workspace, loraids: list[int], devices: list[str] | None = None,
                  merge_out: str | None = None) -> list:
    """Queue one pinned training job per slice (and the merge job after them); returns the jobs."""
    plans = plan_slices(settings, loraids, devices or default_devices(len(loraids)))
    merge = merge_argv(plans, workspace, merge_out) if merge_out else None
    jobs = []
    for plan in plans:
        config = write_run_config(plan.settings, workspace)
        jobs.append(manager.submit(train_argv(config, workspace), kind=TRAIN_KIND, title=plan.title,
                                   settings=plan.settings.model_dump(mode="json"), device=plan.device,
                                   env={"CUDA_VISIBLE_DEVICES": plan.visible_devices}))
    if merge is not None:
        jobs.append(manager.submit(merge, kind=MERGE_KIND, title=f"Merge LORAIDs {loraids} into the base",
                                   after=[job.id for job in jobs]))
    return jobs


# ---- command line --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run TOML or preset JSON with the training settings")
    parser.add_argument("--workspace", required=True, help="workspace folder (its job runner runs the slices)")
    parser.add_argument("--loraids", nargs="+", type=int, required=True, metavar="ID", help="LORAIDs to train")
    parser.add_argument("--gpus", nargs="+", default=None, metavar="INDEX",
                        help="CUDA device indices to spread the slices over (default: every GPU; none: CPU slots)")
    parser.add_argument("--merge", default=None, metavar="OUT",
                        help="after every slice succeeded, fold them all into the base DiT, written here")


def run(args) -> int:
    from backend.jobs.manager import JobManager
    from backend.train.settings import TrainSettings

    workspace = Workspace(args.workspace)
    if not workspace.root.is_dir():
        raise UserError(f"the workspace {workspace.root} does not exist; pass an existing folder.")
    settings = TrainSettings.load_file(args.config)
    manager = JobManager.for_folder(workspace.jobs)
    jobs = submit_slices(manager, settings, workspace, args.loraids, args.gpus, args.merge)
    manager.refresh()
    for job in jobs:
        print(f"{job.id}  {job.title}")
    return 0

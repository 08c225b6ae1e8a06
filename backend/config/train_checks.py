"""Check a training form against the settings model and the workspace: one sentence per field that is wrong.

`check_train_settings(values, workspace)` validates every field at once with pydantic (not only the first bad one),
then, when the values form valid TrainSettings, what only the workspace can tell: paths that must exist, the
checkpoint's architecture, the dataset TOML, network_args together with the network type and the LORAID slice,
the LORAID's allocation and whether a LoRA file in the workspace already owns part of it. `deep=True` (before a
start) also opens the dataset's caches. Errors block a start; notes are worth knowing but do not.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from backend.adapters.network_config import NetworkConfig
from backend.data.cached_dataset import CachedDataset, app_rerun
from backend.data.dataset_config import load_dataset_config
from backend.errors import UserError
from backend.loraid.allocation import Allocation, compact_ranges
from backend.loraid.registry import LoraidRegistry, collides
from backend.models.checkpoint import read_checkpoint_shapes
from backend.models.demo import demo_transformer_file
from backend.models.registry import check_model_kind, get_model_kind
from backend.train.memory import check_memory_settings, check_offload_settings
from backend.train.outputs import output_problems, running_allocations
from backend.train.networks import ExpertPlan, loraid_allocation, network_args_for
from backend.train.paths import resolve_path
from backend.train.sample_prompts import load_sample_prompts
from backend.train.settings import TrainSettings
from backend.train.ti2v import check_latents_fit, check_ti2v_mode
from backend.train.timesteps import timestep_range
from backend.workspace import Workspace



@dataclass
class FormCheck:
    settings: TrainSettings | None
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    allocation: Allocation | None = None

    @property
    def ok(self) -> bool:
        return self.settings is not None and not self.errors

    def first_error(self) -> str | None:
        return next(iter(self.errors.values()), None)


def check_train_settings(values: dict[str, Any], workspace: Workspace, deep: bool = False,
                         outside_confirmed: bool = True) -> FormCheck:
    """`outside_confirmed=False`: an output folder outside the workspace is an error until the user confirms it."""
    try:
        settings = TrainSettings(**values)
    except ValidationError as exc:
        errors = {**_checks_of_the_rest(values, workspace), **validation_messages(exc)}
        order = {name: index for index, name in enumerate(TrainSettings.model_fields)}
        return FormCheck(None, dict(sorted(errors.items(), key=lambda item: order.get(item[0], len(order)))))
    check = FormCheck(settings)
    _check_model(settings, workspace, check)
    _check_paths(settings, workspace, check)
    _check_dataset(settings, workspace, check, deep)
    _check_network(settings, workspace, check)
    _check_offload(settings, check)
    _check_samples(settings, workspace, check)
    for name, message in output_problems(settings, workspace, outside_confirmed).items():
        check.errors.setdefault(name, message)
    return check


def _checks_of_the_rest(values: dict[str, Any], workspace: Workspace) -> dict[str, str]:
    """The other fields' problems while some fields are invalid (so each wrong field shows its message at once):
    the invalid ones take their defaults and the rest is checked as usual."""
    try:
        TrainSettings(**values)
    except ValidationError as exc:
        rest = {name: value for name, value in values.items() if name not in validation_messages(exc)}
    else:
        return {}
    if rest == values:  # a check across fields: nothing to leave out
        return {}
    return {name: message for name, message in check_train_settings(rest, workspace).errors.items()
            if name in rest}


# --- pydantic's report, field by field ------------------------------------------------------------------------
def label(name: str) -> str:
    info = TrainSettings.field_info().get(name)
    if not info:
        return f"`{name}`"
    return info["label"] if name in info["label"] else f"{info['label']} ({name})"


def _expected(name: str) -> str:
    annotation = TrainSettings.model_fields[name].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = args[0]
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(kind)))
    return {int: "a whole number", float: "a number", str: "a text", bool: "true or false"}.get(kind, "a value")


def validation_messages(exc: ValidationError) -> dict[str, str]:
    messages: dict[str, str] = {}
    for error in exc.errors():
        if not error["loc"]:  # a check across fields (min_timestep < max_timestep)
            text = error["msg"].removeprefix("Value error, ")
            messages.setdefault("max_timestep", f"{text}; lower Min timestep or raise Max timestep.")
            continue
        name = str(error["loc"][0])
        if name in messages:
            continue
        messages[name] = _sentence(name, error)
    return messages


def _sentence(name: str, error: dict) -> str:
    value, kind, ctx = error.get("input"), error["type"], error.get("ctx") or {}
    what = label(name)
    if kind == "string_too_short":
        return f"{what} is empty; enter a name."
    if value is None or value == "":
        return f"{what} is empty; enter {_expected(name)}."
    bounds = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "above"),
              "less_than_equal": ("le", "at most"), "less_than": ("lt", "below")}
    if kind in bounds:
        key, words = bounds[kind]
        return f"{what} is {value!r}; it must be {words} {ctx[key]}."
    return f"{what} = {value!r} is not {_expected(name)}; enter {_expected(name)}."


# --- what the workspace can tell ------------------------------------------------------------------------------
def _path(value: str, workspace: Workspace) -> Path | None:
    return Path(resolve_path(value, workspace)) if value else None


def _check_model(s: TrainSettings, workspace: Workspace, check: FormCheck) -> None:
    kind = get_model_kind(s.model_kind)
    plan = ExpertPlan.from_settings(s, kind)
    needs = {"dit": None in plan.experts or "low" in plan.experts, "dit_high_noise": "high" in plan.experts}
    for name, needed in needs.items():
        if not needed:
            continue
        given = _path(getattr(s, name), workspace)
        if given is None:
            if kind.name.startswith("demo-"):
                expert = None if None in plan.experts else ("high" if name == "dit_high_noise" else "low")
                demo = demo_transformer_file(workspace, kind.name, expert)
                if not demo.exists():
                    check.errors[name] = (f"The workspace has no demo model at {demo}; run `python -m backend demo "
                                          f"--workspace {workspace.root}` or type a checkpoint path.")
            else:
                check.errors[name] = (f"{kind.label} needs a checkpoint here; type the path of its transformer "
                                      ".safetensors file or diffusers folder.")
            continue
        if not given.exists():
            check.errors[name] = (f"{label(name)}: {given} does not exist; type the path of the transformer "
                                  ".safetensors file or diffusers folder.")
            continue
        try:
            check_model_kind(read_checkpoint_shapes(given), kind.name, given.name)
        except UserError as exc:
            check.errors[name] = str(exc)
    try:
        check_ti2v_mode(s, kind)
    except UserError:
        check.errors["ti2v_mode"] = (f"{label('ti2v_mode')} i2v is for Wan2.2 TI2V-5B and the demo TI2V model; "
                                     f"pick t2v for {kind.label}.")
    if kind.has_experts and s.expert != "both":
        try:
            timestep_range(s.min_timestep, s.max_timestep, s.expert, plan.boundary)
        except ValueError as exc:
            check.errors.setdefault("min_timestep", f"{exc}".capitalize())


def _check_paths(s: TrainSettings, workspace: Workspace, check: FormCheck) -> None:
    for name, what in (("vae", "the VAE folder"), ("text_encoder", "the text encoder folder")):
        path = _path(getattr(s, name), workspace)
        if path is not None and not path.exists():
            check.errors[name] = f"{label(name)}: {path} does not exist; type {what}, or leave it empty for the demo."
    for name, what in (("network_weights", "a LoRA .safetensors file"), ("sample_prompts", "a prompts text file")):
        path = _path(getattr(s, name), workspace)
        if path is not None and not path.is_file():
            check.errors[name] = f"{label(name)}: {path} is not a file; type the path of {what} or leave it empty."
    resume = _path(s.resume, workspace)
    if resume is not None and not resume.is_dir():
        check.errors["resume"] = (f"{label('resume')}: {resume} is not a folder; pick a *-state folder written with "
                                  "Save training state, or leave it empty.")
    output = _path(s.output_dir, workspace)
    if output is not None and output.exists() and not output.is_dir():
        check.errors["output_dir"] = f"{label('output_dir')}: {output} is a file; type a folder for the LoRA files."
    for name, what in (("vae", "folder"), ("text_encoder", "folder")):
        path = _path(getattr(s, name), workspace)
        if path is not None and path.is_file() and name not in check.errors:
            check.errors[name] = f"{label(name)}: {path} is a file; type the {what} that holds it."


def _check_samples(s: TrainSettings, workspace: Workspace, check: FormCheck) -> None:
    """As the trainer: a prompts file and an interval go together; the file's lines must parse."""
    interval = s.sample_every_n_steps or s.sample_every_n_epochs
    if interval and not s.sample_prompts:
        check.errors["sample_prompts"] = ("Samples are due every few steps/epochs but no sample prompts file is "
                                          "given; choose one or clear Sample every N steps/epochs.")
        return
    if not s.sample_prompts or "sample_prompts" in check.errors:
        return
    if not interval:
        check.errors["sample_every_n_steps"] = ("A sample prompts file is given but no interval; set Sample every N "
                                                "steps (or epochs) or clear the prompts file.")
        return
    try:
        load_sample_prompts(_path(s.sample_prompts, workspace))
    except UserError as exc:
        check.errors["sample_prompts"] = str(exc)


def _check_dataset(s: TrainSettings, workspace: Workspace, check: FormCheck, deep: bool) -> None:
    path = _path(s.dataset_config, workspace)
    if path is None:
        check.errors["dataset_config"] = ("No dataset TOML is chosen; pick one from the list or type its path (the "
                                          "Dataset tab writes one).")
        return
    try:
        if deep:
            dataset = CachedDataset.from_file(path, seed=s.seed, rerun=app_rerun)  # deep: the app's Start
            check_latents_fit(dataset, get_model_kind(s.model_kind), s,
                              f"python -m backend cache latents --dataset_config {path}")
        else:
            load_dataset_config(path)
    except UserError as exc:
        check.errors["dataset_config"] = str(exc)


def _check_network(s: TrainSettings, workspace: Workspace, check: FormCheck) -> None:
    kind = get_model_kind(s.model_kind)
    try:
        check.allocation = loraid_allocation(s, kind, ExpertPlan.from_settings(s, kind))
    except UserError as exc:
        check.errors["loraid"] = str(exc)
        return
    chosen = {line.split("=", 1)[0].strip() for line in s.network_args} & {"include_patterns", "exclude_patterns"}
    if check.allocation is not None and chosen:
        patterns = " and ".join(sorted(chosen))
        check.errors["network_args"] = (f"LORAID {s.loraid} chooses the trained blocks itself, so {patterns} cannot "
                                        "be set too; clear the patterns or set LORAID to none.")
        return
    try:
        config = NetworkConfig.from_network_args(s.network_dim, s.network_alpha, network_args_for(s, check.allocation))
    except UserError as exc:
        check.errors["network_args"] = str(exc)
        return
    try:
        check_memory_settings(s, config.use_dora)
    except UserError as exc:
        field = "fp8_base" if s.fp8_base and (config.use_dora or s.fp8_scaled) else "attn_mode"
        check.errors[field] = str(exc)
    if check.allocation is None:
        return
    if check.allocation.warning:
        check.notes["loraid"] = check.allocation.warning
    if not s.resume:
        taken = taken_by(check.allocation, workspace, _path(s.output_dir, workspace))
        if taken:
            check.errors["loraid"] = taken


def _check_offload(s: TrainSettings, check: FormCheck) -> None:
    kind = get_model_kind(s.model_kind)
    try:
        check_offload_settings(s, kind.num_blocks, kind.label)
    except UserError as exc:
        check.errors["offload_activations" if str(exc).startswith("offload_activations") else "blocks_to_swap"] = str(exc)


def taken_by(allocation: Allocation, workspace: Workspace, output_dir: Path | None = None) -> str | None:
    """A sentence naming the workspace's LoRA files (that still exist) or running runs owning part of this slice;
    None if free."""
    running = [name for name, other in running_allocations([workspace.loras, output_dir or workspace.loras])
               if collides(allocation, other)]
    if running:
        return (f"LORAID {allocation.loraid} is being trained right now by the run writing {running[0]}; pick a free "
                "ID, or wait for that run to end.")
    try:
        registry = LoraidRegistry.for_workspace(workspace)
        owners = [e for e in registry.owners(allocation) if registry.resolve(e).is_file()]
    except UserError as exc:
        return str(exc)
    if not owners:
        return None
    described = []
    for entry in owners:
        shared = sorted({b for b, _ in set(allocation.owned_units()) & set(entry.parsed.owned_units())})
        described.append(f"{entry.file} (blocks {compact_ranges(shared)})")
    return (f"LORAID {allocation.loraid} is already taken by {', '.join(described)}; pick a free ID, or delete that "
            "file to train this slice again.")

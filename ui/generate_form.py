"""The Generate tab's form as plain values: the widgets' values in one fixed order, turned into a backend
`GenerateRequest`, and back (a past result's request becomes the values that refill the widgets). Its fields are the
settings models' fields (backend/generate/options.py), by name, plus the few widgets only the page has."""
from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import field, fields, make_dataclass, replace
from pathlib import Path

from backend.config.settings import Settings
from backend.errors import UserError, refuse_first
from backend.generate.lora_catalog import picker_value, resolve_lora
from backend.generate.memory import MemoryOptions, memory_problems
from backend.generate.model_options import AUTO_KIND, read_model
from backend.generate.options import (Companions, LoraOptions, MoeOptions, RunOptions, lora_problems,
                                      moe_file_problems, moe_problems)
from backend.generate.request import GenerateRequest, LoraPick
from backend.generate.settings import DEMO_START, GenerateSettings, settings_problems
from backend.loraid.registry import LoraidRegistry
from backend.workspace import Workspace

MAX_LORAS = 12  # multiplier sliders on the page; the command line takes any number
LORA_MODES = [("Merged into the weights (fast steps)", "merged"), ("Hooked adapters (live multipliers)", "hooked")]

# The settings parts this form shows as one widget per field (by the field's name), and the fields it shows of each.
FORM_PARTS: dict[type[Settings], list[str]] = {
    GenerateSettings: list(GenerateSettings.model_fields), Companions: list(Companions.model_fields),
    MemoryOptions: list(MemoryOptions.model_fields), LoraOptions: ["loraid", "allow_overlap"],
    MoeOptions: list(MoeOptions.model_fields), RunOptions: ["save_latents", "save_frames"]}
# The form's own widgets: how it shows what the command line gives as --model / --dit (one model box), --hooked (a
# choice of two), --lora / --multiplier (a file list and a slider per file), and the seed left to the job.
OWN_FIELDS = [("model", str, "demo-t2v"), ("model_kind", str, AUTO_KIND), ("random_seed", bool, False),
              ("lora_mode", str, "merged"), ("lora_files", tuple, ()), ("slot_files", tuple, ())]
# A number box sends 0 (or nothing) when it is emptied: for these optional settings that means "not set" (a router
# smoothing of 0 is a value: no smoothing).
UNSET = {"guidance_scale_2": (None, "", 0), "memory_limit_gb": (None, "", 0), "image": (None, ""),
         "router_ema": (None, ""), "moe": (None, ""), "hint": (None, "")}
START_VALUES = {**DEMO_START.model_dump(), "guidance_scale_2": 0}  # the demo size; 0: the same guidance


def part_of(name: str) -> type[Settings] | None:
    return next((part for part, names in FORM_PARTS.items() if name in names), None)


def _start(part: type[Settings], name: str):
    if part is GenerateSettings:
        return START_VALUES[name]
    value = part.field_info()[name]["default"]
    if typing.get_origin(_kind(part, name)) is list:  # a text box of the values
        return ", ".join(map(str, value))
    return "" if value is None and _kind(part, name) is str else value


def _kind(part: type[Settings], name: str) -> type:
    """The field's type, without the None of an optional one (`float | None` -> float; `list[int]` stays)."""
    annotation = part.model_fields[name].annotation
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    return next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)


class _FormMethods:
    """What the form does with its values; its fields are made from the settings models below."""

    @classmethod
    def names(cls) -> list[str]:
        """The widget order of `values()` (the multipliers come last, one value per slider)."""
        return [f.name for f in fields(cls) if f.name != "multipliers"]

    @classmethod
    def from_values(cls, *values) -> "GenerateForm":
        names = cls.names()
        given = dict(zip(names, values[:len(names)]))
        given["lora_files"] = tuple(given.get("lora_files") or ())
        given["slot_files"] = tuple(given.get("slot_files") or ())
        return cls(**given, multipliers=tuple(values[len(names):]))

    def values(self) -> list:
        return [getattr(self, name) for name in self.names()] + list(self.multipliers)

    def with_changes(self, **changes) -> "GenerateForm":
        return replace(self, **changes)

    # --- to the backend ---------------------------------------------------------------------------------------
    def _part(self, part: type[Settings], problems: dict[str, str], **own) -> dict:
        """The values of `part`'s form fields as settings values (a whole number for int fields, a number for
        float fields, the form's "not set" conventions); a value that cannot be one goes to `problems`."""
        values = {}
        for name in self.PARTS[part]:
            value, kind = getattr(self, name), _kind(part, name)
            try:
                if name in own:
                    values[name] = own[name]
                elif name in UNSET and value in UNSET[name]:
                    values[name] = None
                elif kind is bool:
                    values[name] = bool(value)
                elif kind is int:
                    values[name] = _whole(value, part.named(name))
                elif kind is float:
                    values[name] = _number(value, part.named(name))
                elif typing.get_origin(kind) is list and typing.get_args(kind) == (str,):
                    values[name] = _texts(value)
                elif typing.get_origin(kind) is list:
                    values[name] = _whole_numbers(value, part.named(name))
                else:
                    values[name] = str(value or "")
            except UserError as exc:
                problems[name] = str(exc)
        return values

    def _checked_part(self, part: type[Settings], **own) -> dict:
        """`_part`'s values; raises the first value that is no number."""
        problems: dict[str, str] = {}
        values = self._part(part, problems, **own)
        refuse_first(problems)
        return values

    def settings(self) -> GenerateSettings:
        """The generation settings, field by field of GenerateSettings; raises the first value that is no number."""
        return GenerateSettings(**self._checked_part(GenerateSettings, **({"seed": 0} if self.random_seed else {})))

    def memory_options(self) -> MemoryOptions:
        return MemoryOptions(**self._checked_part(MemoryOptions))

    def moe_options(self, ws: Workspace | None = None) -> MoeOptions:
        """The LoRA-MoE picker's options (a typed file is relative to the workspace); raises the first value that
        is no number."""
        values = self._checked_part(MoeOptions)
        if values.get("moe") and ws is not None:
            values["moe"] = _folder_text(ws, values["moe"])
        return MoeOptions(**values)

    def problems(self, ws: Workspace | None = None) -> dict[str, str]:
        """Every field that is wrong as it stands, by name, with its one sentence (the prompt may still be empty:
        it is being written); with the workspace, the model part folders too. The model and the LoRA files have
        their own messages beside them; the rest of the request is checked on Run."""
        problems: dict[str, str] = {}
        if ws is not None:
            problems.update(self.companions(ws).problems())
        generation = self._part(GenerateSettings, problems, **({"seed": 0} if self.random_seed else {}))
        memory = self._part(MemoryOptions, problems)
        given = {name: value for name, value in generation.items() if name not in problems}
        defaults = {name: START_VALUES[name] for name in problems if name in START_VALUES}
        defaults.pop("guidance_scale_2", None)
        for name, message in settings_problems(GenerateSettings(**{**defaults, **given})).items():
            if name in given and name != "prompt":
                problems.setdefault(name, message)
        for name, message in memory_problems(MemoryOptions(**{n: v for n, v in memory.items()
                                                              if n not in problems})).items():
            problems.setdefault(name, message)
        loras = self._part(LoraOptions, problems)
        if "loraid" not in problems:
            problems.update(lora_problems(LoraOptions(loraid=loras["loraid"])))
        if "loraid" not in problems and ws is not None:
            problems.update(_unregistered(ws, loras["loraid"]))
        moe = {name: value for name, value in self._part(MoeOptions, problems).items() if name not in problems}
        if moe.get("moe") and ws is not None:
            moe["moe"] = _folder_text(ws, moe["moe"])
        options = MoeOptions(**moe)  # the picked file's checks read its header only
        for name, message in [*moe_problems(options).items(), *moe_file_problems(options).items()]:
            problems.setdefault(name, message)
        order = self.names()
        return dict(sorted(problems.items(), key=lambda item: order.index(item[0])))

    def lora_picks(self, ws: Workspace) -> tuple[LoraPick, ...]:
        files = list(self.lora_files)
        if len(files) > MAX_LORAS:
            raise UserError(f"{len(files)} LoRAs are chosen and this tab applies up to {MAX_LORAS}; merge some into "
                            f"one (Merge tab) or run `python -m backend generate` with all of them.")
        if list(self.slot_files[:len(files)]) != files:
            raise UserError("The LoRA list is still updating; press Run again.")
        return tuple(LoraPick(resolve_lora(ws.root, ws.loras, name), float(multiplier))
                     for name, multiplier in zip(files, self.multipliers))

    def companions(self, ws: Workspace) -> Companions:
        return Companions(**{name: _folder_text(ws, getattr(self, name)) for name in self.PARTS[Companions]})

    def request(self, ws: Workspace) -> GenerateRequest:
        refuse_first(self.problems(ws))
        companions = self.companions(ws)
        lora_options = LoraOptions(**self._part(LoraOptions, {}), hooked=self.lora_mode == "hooked")
        return GenerateRequest(
            read_model(ws, self.model, self.model_kind), self.settings(), random_seed=bool(self.random_seed),
            loras=self.lora_picks(ws), lora_options=lora_options, memory=self.memory_options(), companions=companions,
            outputs=RunOptions(**self._part(RunOptions, {})), moe=self.moe_options(ws))

    # --- from a past result -----------------------------------------------------------------------------------
    @classmethod
    def from_request(cls, ws: Workspace, request: GenerateRequest) -> "GenerateForm":
        files = tuple(picker_value(ws.root, ws.loras, pick.path) for pick in request.loras)[:MAX_LORAS]
        multipliers = tuple(pick.multiplier for pick in request.loras)[:MAX_LORAS]
        parts = {GenerateSettings: request.settings, Companions: request.companions, MemoryOptions: request.memory,
                 LoraOptions: request.lora_options, MoeOptions: request.moe, RunOptions: request.outputs}
        values = {name: getattr(parts[part], name) for part, names in cls.PARTS.items() for name in names}
        values.update(loraid=", ".join(map(str, request.lora_options.loraid)))  # a result names its LoRAs' files
        values.update({name: "" for name, value in request.companions.model_dump().items() if value is None})
        values.update(guidance_scale_2=request.settings.guidance_scale_2 or 0)
        moe_file = Path(request.moe.moe) if request.moe.moe else None  # a result names its file: in loras/
        values.update(moe="" if moe_file is None else str(moe_file if moe_file.is_absolute() else ws.loras / moe_file),
                      hint=request.moe.hint or "", expert_strength=", ".join(request.moe.expert_strength))
        return cls(**values, model=request.model.value(ws), model_kind=request.model.model_kind or AUTO_KIND,
                   random_seed=False, lora_mode="hooked" if request.hooked else "merged", lora_files=files,
                   slot_files=files, multipliers=multipliers + (1.0,) * (MAX_LORAS - len(multipliers)))


def form_class(parts: dict[type[Settings], list[str]]) -> type:
    """A form with one field per shown setting of `parts` (starting at the model's values, the demo size for the
    generation settings) and the form's own widgets."""
    return make_dataclass(
        "GenerateForm",
        [*((name, typing.Any, field(default=_start(part, name))) for part, names in parts.items() for name in names),
         *((name, kind, field(default=default)) for name, kind, default in OWN_FIELDS),
         ("multipliers", tuple, field(default=(1.0,) * MAX_LORAS))],
        bases=(_FormMethods,), frozen=True, namespace={"PARTS": parts, "__module__": __name__,
                                                       "__doc__": "The Generate tab's values, one field per widget."})


GenerateForm = form_class(FORM_PARTS)


def _number(value, label: str) -> float:
    if value is None or value == "":
        raise UserError(f"{label} is empty; type a number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} `{value}` is not a number; type a number.") from None
    if not math.isfinite(number):
        raise UserError(f"{label} must be a finite number, not {value}.")
    return number


def _whole(value, label: str) -> int:
    number = _number(value, label)
    if number != int(number):
        raise UserError(f"{label} must be a whole number, not {value}.")
    return int(number)


def _whole_numbers(value, label: str) -> list[int]:
    """`1, 2 3` (or a list) as whole numbers; anything else is one sentence."""
    numbers = []
    for part in _texts(value):
        try:
            number = float(part)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number != int(number):
            raise UserError(f"{label} `{part}` is not a whole number; type whole numbers such as 1 2 3.")
        numbers.append(int(number))
    return numbers


def _texts(value) -> list[str]:
    """`red=0.8, blue=1.2` (or a list) as its entries."""
    return [part for part in re.split(r"[,;\s]+", value.strip()) if part] if isinstance(value, str) \
        else [str(part) for part in value or []]


def _unregistered(ws: Workspace, loraids: list[int]) -> dict[str, str]:
    """The LORAIDs field's problem when an ID has no LoRA in the workspace's registry."""
    known = {entry.loraid for entry in LoraidRegistry.for_workspace(ws.root).entries()} if loraids else set()
    missing = [loraid for loraid in loraids if loraid not in known]
    if not missing:
        return {}
    return {"loraid": f"{LoraOptions.named('loraid')} {missing[0]} has no LoRA in the workspace's registry; pick an "
                      f"ID the LORAID tab lists, or choose the file under LoRA files."}


def _folder_text(ws: Workspace, text: str | None) -> str | None:
    """A typed folder, relative to the workspace unless absolute; empty means the workspace's own."""
    text = (text or "").strip().strip('"')
    if not text:
        return None
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else ws.root / path)

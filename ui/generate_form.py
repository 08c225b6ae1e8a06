"""The Generate tab's form as plain values: the widgets' values in one fixed order, turned into a backend
`GenerateRequest`, and back (a past result's request becomes the values that refill the widgets)."""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from backend.errors import UserError
from backend.generate.lora_catalog import picker_value, resolve_lora
from backend.generate.memory import MemoryOptions
from backend.generate.model_options import AUTO_KIND, read_model
from backend.generate.request import Companions, GenerateRequest, LoraPick
from backend.generate.settings import DEMO_START as START
from backend.generate.settings import GenerateSettings, named
from backend.workspace import Workspace

MAX_LORAS = 12  # multiplier sliders on the page; the command line takes any number
SAME_GUIDANCE = (None, "", 0)  # a number box sends 0 when it is emptied
LORA_MODES = [("Merged into the weights (fast steps)", "merged"), ("Hooked adapters (live multipliers)", "hooked")]


@dataclass(frozen=True)
class GenerateForm:
    prompt: str = START.prompt
    negative_prompt: str = START.negative_prompt
    model: str = "demo-t2v"
    model_kind: str = AUTO_KIND
    image: str | None = None
    vae: str = ""
    text_encoder: str = ""
    tokenizer: str = ""
    image_encoder: str = ""
    width: float | None = START.width
    height: float | None = START.height
    frames: float | None = START.frames
    fps: float | None = START.fps
    steps: float | None = START.steps
    guidance_scale: float | None = START.guidance_scale
    guidance_scale_2: float | None = 0  # 0 (or empty): the same as guidance_scale
    flow_shift: float | None = START.flow_shift
    seed: float | None = START.seed
    random_seed: bool = False
    sampler: str = START.sampler
    lora_mode: str = "merged"
    allow_overlap: bool = False
    cpu_offload: bool = False
    fp8: bool = False
    vae_tiling: bool = False
    blocks_to_swap: float | None = 0
    save_latents: bool = False
    save_frames: bool = False
    lora_files: tuple[str, ...] = ()
    slot_files: tuple[str, ...] = ()  # the files the sliders show, slot by slot
    multipliers: tuple[float, ...] = field(default=(1.0,) * MAX_LORAS)

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
    def settings(self) -> GenerateSettings:
        """The generation settings, field by field of GenerateSettings (numbers checked for being whole where the
        field is a whole number); the form's own conventions: an empty image or low-noise guidance is "not set"."""
        values = {}
        for name, field in GenerateSettings.model_fields.items():
            value = getattr(self, name)
            kind = next((a for a in typing.get_args(field.annotation) if a is not type(None)), field.annotation)
            if name == "seed" and self.random_seed:
                values[name] = 0
            elif name == "guidance_scale_2" and value in SAME_GUIDANCE or name == "image" and not value:
                values[name] = None
            elif kind is int:
                values[name] = _whole(value, named(name))
            elif kind is float:
                values[name] = _number(value, named(name))
            else:
                values[name] = str(value or "")
        return GenerateSettings(**values)

    def lora_picks(self, ws: Workspace) -> tuple[LoraPick, ...]:
        files = list(self.lora_files)
        if len(files) > MAX_LORAS:
            raise UserError(f"{len(files)} LoRAs are chosen and this tab applies up to {MAX_LORAS}; merge some into "
                            f"one (Merge tab) or run `python -m backend generate` with all of them.")
        if list(self.slot_files[:len(files)]) != files:
            raise UserError("The LoRA list is still updating; press Run again.")
        return tuple(LoraPick(resolve_lora(ws.root, ws.loras, name), float(multiplier))
                     for name, multiplier in zip(files, self.multipliers))

    def request(self, ws: Workspace) -> GenerateRequest:
        companions = Companions(**{name: _folder_text(ws, getattr(self, name)) for name in Companions.LABELS})
        return GenerateRequest(
            read_model(ws, self.model, self.model_kind), self.settings(), random_seed=bool(self.random_seed),
            loras=self.lora_picks(ws), hooked=self.lora_mode == "hooked", allow_overlap=bool(self.allow_overlap),
            memory=MemoryOptions(cpu_offload=bool(self.cpu_offload), fp8=bool(self.fp8),
                                 vae_tiling=bool(self.vae_tiling),
                                 blocks_to_swap=_whole(self.blocks_to_swap or 0, "Blocks to swap")),
            companions=companions, save_latents=bool(self.save_latents), save_frames=bool(self.save_frames))

    # --- from a past result -----------------------------------------------------------------------------------
    @classmethod
    def from_request(cls, ws: Workspace, request: GenerateRequest) -> "GenerateForm":
        s, c = request.settings, request.companions
        files = tuple(picker_value(ws.root, ws.loras, pick.path) for pick in request.loras)[:MAX_LORAS]
        multipliers = tuple(pick.multiplier for pick in request.loras)[:MAX_LORAS]
        return cls(
            prompt=s.prompt, negative_prompt=s.negative_prompt, model=request.model.value(ws),
            model_kind=request.model.model_kind or AUTO_KIND,
            image=s.image, vae=c.vae or "", text_encoder=c.text_encoder or "", tokenizer=c.tokenizer or "",
            image_encoder=c.image_encoder or "", width=s.width, height=s.height, frames=s.frames, fps=s.fps,
            steps=s.steps, guidance_scale=s.guidance_scale, guidance_scale_2=s.guidance_scale_2 or 0,
            flow_shift=s.flow_shift, seed=s.seed, random_seed=False, sampler=s.sampler,
            lora_mode="hooked" if request.hooked else "merged", allow_overlap=request.allow_overlap,
            cpu_offload=request.memory.cpu_offload, fp8=request.memory.fp8, vae_tiling=request.memory.vae_tiling,
            blocks_to_swap=request.memory.blocks_to_swap,
            save_latents=request.save_latents, save_frames=request.save_frames, lora_files=files, slot_files=files,
            multipliers=multipliers + (1.0,) * (MAX_LORAS - len(multipliers)))


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


def _folder_text(ws: Workspace, text: str | None) -> str | None:
    """A typed folder, relative to the workspace unless absolute; empty means the workspace's own."""
    text = (text or "").strip().strip('"')
    if not text:
        return None
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else ws.root / path)

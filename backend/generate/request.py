"""One generation as a form asks for it: checked with the generate engine's own rules before a job starts (settings,
model, start image, LoRA files and their overlaps, memory options), turned into `python -m backend generate`
arguments, and rebuilt from a result's sidecar JSON so its settings can be reused.

    request = GenerateRequest(read_model(ws, "demo-t2v"), GenerateSettings(prompt="a red ball", width=64, ...),
                              loras=(LoraPick(ws.loras / "alice.safetensors", 1.0),))
    warnings = request.check()                       # UserError: one sentence, nothing started
    argv = [sys.executable, "-m", "backend", *request.arguments(ws.root)]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from backend.errors import UserError, refuse_first
from backend.generate.lora_catalog import check_overlaps, summarize
from backend.generate.memory import MemoryOptions, check_memory_options
from backend.generate.model_options import ModelPick, pick_from_record
from backend.generate.options import Companions, LoraOptions, MoeOptions, RunOptions, check_moe_options, named
from backend.generate.pipeline import accepts_image, check_size
from backend.generate.settings import GenerateSettings, validate


@dataclass(frozen=True)
class LoraPick:
    path: Path
    multiplier: float = 1.0


@dataclass(frozen=True)
class GenerateRequest:
    model: ModelPick
    settings: GenerateSettings
    random_seed: bool = False  # leave the seed to the job (it picks one and records it)
    loras: tuple[LoraPick, ...] = ()
    lora_options: LoraOptions = field(default_factory=LoraOptions)  # how they apply (the files are `loras`)
    memory: MemoryOptions = field(default_factory=MemoryOptions)
    companions: Companions = field(default_factory=Companions)
    outputs: RunOptions = field(default_factory=RunOptions)  # what is saved beside the video
    moe: MoeOptions = field(default_factory=MoeOptions)  # a LoRA-MoE file and how its experts are chosen

    @property
    def hooked(self) -> bool:
        return self.lora_options.hooked

    @property
    def allow_overlap(self) -> bool:
        return self.lora_options.allow_overlap

    @property
    def save_latents(self) -> bool:
        return self.outputs.save_latents

    @property
    def save_frames(self) -> bool:
        return self.outputs.save_frames

    def check(self) -> list[str]:
        """Raise a UserError for the first thing that would make the job fail; returns allowed-overlap warnings."""
        settings = validate(self.settings)
        if settings.guidance_scale_2 is not None and not self.model.is_pair:
            raise UserError(f"{named('guidance_scale_2')} is for a Wan2.2 A14B expert pair; leave it empty for a "
                            f"single-transformer model.")
        task = self.model.task
        check_size(settings, task)
        if settings.image is not None and not accepts_image(task):
            raise UserError("This is a text-to-video model, so it cannot start from an image; remove the start "
                            "image or pick an image-to-video model.")
        if settings.image is None and task == "i2v":
            raise UserError("This is an image-to-video model; add a start image.")
        refuse_first(self.companions.problems())
        check_memory_options(self.memory)
        check_moe_options(self.moe)
        paths = [Path(pick.path) for pick in self.loras]
        for pick in self.loras:
            summarize(pick.path)  # exists, is a readable .safetensors
            if not math.isfinite(pick.multiplier):
                raise UserError(f"The multiplier of {Path(pick.path).name} must be a finite number such as 1.0.")
        if len({path.resolve() for path in paths}) != len(paths):
            raise UserError("The same LoRA file is chosen twice; choose each file once.")
        return check_overlaps(paths, self.model.roles, self.allow_overlap)

    def with_image(self, image: Path) -> "GenerateRequest":
        return replace(self, settings=self.settings.with_overrides(image=str(image)))

    def arguments(self, workspace: Path) -> list[str]:
        """`generate ...` arguments (single values as `--name=value`, so a prompt may start with a dash)."""
        by_id = list(dict.fromkeys(self.lora_options.loraid))
        strengths = [float(pick.multiplier) for pick in self.loras]
        loras = self.lora_options.model_copy(update={  # a LoRA picked by its LORAID applies at strength 1.0
            "lora": [str(Path(pick.path).resolve()) for pick in self.loras], "loraid": by_id,
            "multiplier": strengths + [1.0] * len(by_id) if strengths else [],
            "allow_overlap": self.allow_overlap and bool(self.loras or by_id)})
        return ["generate", *RunOptions(workspace=str(Path(workspace))).flag_arguments(), *self.model.arguments(),
                *self.settings.arguments(leave_out=("seed",) if self.random_seed else ()),
                *self.companions.flag_arguments(), *loras.flag_arguments(),
                *self.memory.flag_arguments(only_changed=True), *self.moe.flag_arguments(only_changed=True),
                *self.outputs.flag_arguments(only_changed=True)]

    def job_settings(self) -> dict:
        """What the job record keeps about the request (plain JSON)."""
        return {"settings": self.settings.to_dict(), "random_seed": self.random_seed,
                "model": {"demo": self.model.demo, "dit": [str(p) for p in self.model.dit],
                          "model_kind": self.model.model_kind},
                "loras": [{"path": str(pick.path), "multiplier": pick.multiplier} for pick in self.loras],
                **({"loraids": list(self.lora_options.loraid)} if self.lora_options.loraid else {}),
                "lora_mode": "hooked" if self.hooked else "merged", "allow_overlap": self.allow_overlap,
                "memory": self.memory.to_dict(), "companions": self.companions.given(),
                **({"moe": self.moe.changed_fields()} if self.moe.moe else {}),
                "save_latents": self.save_latents, "save_frames": self.save_frames}

    @classmethod
    def from_record(cls, record: dict) -> "GenerateRequest":
        """The request that made a result, from its sidecar JSON; files it names are not checked here."""
        try:
            known = GenerateSettings.model_fields
            settings = GenerateSettings(**{k: v for k, v in record["settings"].items() if k in known})
            model = record.get("model") or {}
            loras = tuple(LoraPick(Path(item["path"]), float(item.get("multiplier", 1.0)))
                          for item in record.get("loras") or [])
            memory = MemoryOptions.from_dict(record.get("memory") or {})
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UserError("This result's settings record is incomplete or damaged, so it cannot be reused; pick "
                            "another result.") from None
        companions = Companions(**{name: model.get(name) for name in Companions.model_fields if model.get(name)})
        outputs = record.get("outputs") or {}
        moe = _moe_from_record(record.get("moe"))
        return cls(pick_from_record(model), settings, loras=loras,
                   lora_options=LoraOptions(hooked=record.get("lora_mode") == "hooked",
                                            allow_overlap=bool(record.get("allow_overlap"))),
                   memory=memory, companions=companions,
                   outputs=RunOptions(save_latents="latents" in outputs, save_frames="frames" in outputs), moe=moe)


def _moe_from_record(moe: dict | None) -> MoeOptions:
    """The LoRA-MoE picks a result records: its file (by path; a record without one names the file as it lies in
    the workspace's loras folder), expert, strengths and router smoothing."""
    if not isinstance(moe, dict) or not (moe.get("path") or moe.get("file")):
        return MoeOptions()
    try:
        strengths = [f"{name}={float(value):g}" for name, value in (moe.get("strengths") or {}).items()]
        return MoeOptions(moe=str(moe.get("path") or moe["file"]), hint=moe.get("hint"), expert_strength=strengths,
                          router_ema=moe.get("router_ema"))
    except (TypeError, ValueError, AttributeError):
        return MoeOptions()

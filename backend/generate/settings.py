"""What one generation asks for, checked before any model is loaded: every rule is one sentence to the user."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from backend.errors import UserError

SAMPLERS = ("unipc", "euler")
MAX_SEED = 2 ** 63 - 1
MAX_FRAMES = 1001
MAX_SIDE = 4096
LABELS = {"prompt": "Prompt", "negative_prompt": "Negative prompt", "seed": "Seed", "steps": "Steps",
          "guidance_scale": "Guidance scale", "guidance_scale_2": "Low-noise guidance scale",
          "flow_shift": "Flow shift", "sampler": "Sampler", "width": "Width", "height": "Height", "frames": "Frames",
          "fps": "Frames per second", "image": "Start image"}


def named(name: str) -> str:
    """`Frames (frames)`: the form's label and the setting's name (the command line's flag is `--frames`), so a
    message reads right in the page and on the command line alike."""
    return f"{LABELS.get(name, name)} ({name})"


@dataclass(frozen=True)
class GenerateSettings:
    prompt: str
    negative_prompt: str = ""
    seed: int = 42
    steps: int = 30
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None  # low-noise expert of a Wan2.2 A14B pair; None: same as guidance_scale
    flow_shift: float = 3.0
    sampler: str = "unipc"
    width: int = 832
    height: int = 480
    frames: int = 81  # 4n+1; 1 = an image
    fps: int = 16
    image: str | None = None  # I2V start image

    @property
    def is_image(self) -> bool:
        return self.frames == 1

    def with_overrides(self, **changes) -> "GenerateSettings":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def validate(settings: GenerateSettings) -> GenerateSettings:
    """Return the settings unchanged, or raise a UserError naming the first wrong value and how to fix it."""
    if not settings.prompt.strip():
        raise UserError("The prompt is empty; write what the video should show.")
    return validate_values(settings)


def validate_values(settings: GenerateSettings) -> GenerateSettings:
    """Every rule of `validate` but the prompt's (a form checks these while its prompt is still being written)."""
    s = settings
    for name in ("guidance_scale", "guidance_scale_2", "flow_shift"):
        value = getattr(s, name)
        if value is not None and not math.isfinite(value):
            raise UserError(f"{named(name)} = {value} is not a finite number; give a number such as 5.0.")
    if s.seed is not None and not 0 <= s.seed <= MAX_SEED:
        raise UserError(f"{named('seed')} = {s.seed} is outside 0..{MAX_SEED}; give a smaller whole number.")
    if s.frames > MAX_FRAMES:
        raise UserError(f"{named('frames')} = {s.frames} is more than this app generates ({MAX_FRAMES}); use 81 or fewer for "
                        "Wan's usual clip length.")
    for name, value in (("width", s.width), ("height", s.height)):
        if value > MAX_SIDE:
            raise UserError(f"{named(name)} = {value} is larger than {MAX_SIDE}; use Wan's 832x480 or 1280x720.")
    if s.frames < 1 or (s.frames - 1) % 4:
        lower = max(1, s.frames - (s.frames - 1) % 4)
        raise UserError(f"{named('frames')} = {s.frames} is not 4n+1 (1, 5, 9, ..., 81); use {lower} or {lower + 4}.")
    for name, value in (("width", s.width), ("height", s.height)):
        if value < 16 or value % 16:
            nearest = max(16, round(value / 16) * 16)
            raise UserError(f"{named(name)} = {value} is not a positive multiple of 16; use {nearest}.")
    if s.steps < 1:
        raise UserError(f"{named('steps')} = {s.steps} must be at least 1.")
    if s.guidance_scale < 1.0 or (s.guidance_scale_2 is not None and s.guidance_scale_2 < 1.0):
        raise UserError("Guidance scales must be 1.0 or more (1.0 turns classifier-free guidance off).")
    if s.flow_shift <= 0:
        raise UserError(f"{named('flow_shift')} = {s.flow_shift} must be positive (Wan uses 3.0 at 480p, 5.0 at 720p).")
    if s.sampler not in SAMPLERS:
        raise UserError(f"Unknown sampler `{s.sampler}`; choose one of: {', '.join(SAMPLERS)}.")
    if s.fps < 1:
        raise UserError(f"{named('fps')} = {s.fps} must be at least 1.")
    if s.image is not None and not Path(s.image).is_file():
        raise UserError(f"The start image {s.image} does not exist; check its path.")
    return s


def make_scheduler(sampler: str, flow_shift: float):
    """UniPC with flow sigmas (Wan's default) or the flow-matching Euler sampler, both shifted by `flow_shift`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       num_train_timesteps=1000, flow_shift=flow_shift)
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
    raise UserError(f"Unknown sampler `{sampler}`; choose one of: {', '.join(SAMPLERS)}.")

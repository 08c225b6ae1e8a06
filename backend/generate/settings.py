"""What one generation asks for, checked before any model is loaded: every rule is one sentence to the user."""
from __future__ import annotations

import math
from pathlib import Path

from pydantic import ConfigDict

from backend.config.settings import Settings, setting
from backend.errors import UserError, refuse_first

SAMPLERS = ("unipc", "euler")
MAX_SEED = 2 ** 63 - 1
MAX_FRAMES = 1001
MAX_SIDE = 4096


class GenerateSettings(Settings):
    """Every option of one generation, declared once: the Generate tab's widgets, the `generate` command line's
    flags and a job's argv all come from these fields (their rules are in `validate`, one sentence each)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)  # `validate` words non-finite numbers

    prompt: str = setting("", label="Prompt", group="Prompt", help="what to show")
    negative_prompt: str = setting("", label="Negative prompt", group="Prompt", help="what to avoid")
    width: int = setting(832, label="Width", group="Size", help="multiple of 16")
    height: int = setting(480, label="Height", group="Size", help="multiple of 16")
    frames: int = setting(81, label="Frames", group="Size", help="4n+1; 1 makes an image")
    fps: int = setting(16, label="Frames per second", group="Size", help="frames per second of the mp4")
    steps: int = setting(30, label="Steps", group="Sampling", help="denoising steps")
    guidance_scale: float = setting(5.0, label="Guidance scale", group="Sampling",
                                    help="classifier-free guidance (1 = off)")
    flow_shift: float = setting(3.0, label="Flow shift", group="Sampling", help="sigma shift (3.0 at 480p, 5.0 at 720p)")
    sampler: str = setting("unipc", label="Sampler", group="Sampling", choices=list(SAMPLERS),
                           help="UniPC (Wan's default) or flow-matching Euler")
    seed: int = setting(42, label="Seed", group="Sampling",
                        help="random seed (the command line picks a random one when it is not given, and records it)")
    guidance_scale_2: float | None = setting(
        None, label="Low-noise guidance scale", group="Sampling",
        help="guidance of the low-noise expert of a Wan2.2 A14B pair (empty: the same as the guidance scale)")
    image: str | None = setting(None, label="Start image", group="Prompt",
                                help="start image: image-to-video (needs an image-to-video model)")

    @property
    def is_image(self) -> bool:
        return self.frames == 1

    def with_overrides(self, overrides: dict | None = None, source: str = "", **changes) -> "GenerateSettings":
        """A copy with some values replaced (checked later by `validate`, which words every rule)."""
        return self.model_copy(update={**(overrides or {}), **changes})

    def to_dict(self) -> dict:
        return self.model_dump()

    def arguments(self, *, leave_out: tuple[str, ...] = ()) -> list[str]:
        """`--name=value` for every set field (`=` so a prompt may start with a dash); None means "not given"."""
        return self.flag_arguments(leave_out=leave_out)


# The Generate tab starts from these (a size and step count the tiny demo models make in seconds on a CPU);
# the command line starts from the model's own defaults, which suit the real Wan models.
DEMO_START = GenerateSettings(width=64, height=64, frames=17, steps=10)
named = GenerateSettings.named  # `Frames (frames)`: the form's label and the setting's name, for messages


def validate(settings: GenerateSettings) -> GenerateSettings:
    """Return the settings unchanged, or raise a UserError naming the first wrong value and how to fix it."""
    refuse_first(settings_problems(settings))
    return settings


def validate_values(settings: GenerateSettings) -> GenerateSettings:
    """Every rule of `validate` but the prompt's (a form checks these while its prompt is still being written)."""
    refuse_first({name: problem for name, problem in settings_problems(settings).items() if name != "prompt"})
    return settings


def settings_problems(settings: GenerateSettings) -> dict[str, str]:
    """Every wrong field by name, each with one sentence naming it as the form does (the first is what `validate`
    raises); empty when the settings can run."""
    s, problems = settings, {}

    def problem(name: str, message: str) -> None:
        problems.setdefault(name, message)

    if not s.prompt.strip():
        problem("prompt", "The prompt is empty; write what the video should show.")
    for name in ("guidance_scale", "guidance_scale_2", "flow_shift"):
        value = getattr(s, name)
        if value is not None and not math.isfinite(value):
            problem(name, f"{named(name)} = {value} is not a finite number; give a number such as 5.0.")
    if s.seed is not None and not 0 <= s.seed <= MAX_SEED:
        problem("seed", f"{named('seed')} = {s.seed} is outside 0..{MAX_SEED}; give a smaller whole number.")
    if s.frames > MAX_FRAMES:
        problem("frames", f"{named('frames')} = {s.frames} is more than this app generates ({MAX_FRAMES}); use 81 or "
                          f"fewer for Wan's usual clip length.")
    for name, value in (("width", s.width), ("height", s.height)):
        if value > MAX_SIDE:
            problem(name, f"{named(name)} = {value} is larger than {MAX_SIDE}; use Wan's 832x480 or 1280x720.")
    if s.frames < 1 or (s.frames - 1) % 4:
        lower = max(1, s.frames - (s.frames - 1) % 4)
        problem("frames", f"{named('frames')} = {s.frames} is not 4n+1 (1, 5, 9, ..., 81); use {lower} or "
                          f"{lower + 4}.")
    for name, value in (("width", s.width), ("height", s.height)):
        if value < 16 or value % 16:
            nearest = max(16, round(value / 16) * 16)
            problem(name, f"{named(name)} = {value} is not a positive multiple of 16; use {nearest}.")
    if s.steps < 1:
        problem("steps", f"{named('steps')} = {s.steps} must be at least 1.")
    for name in ("guidance_scale", "guidance_scale_2"):
        value = getattr(s, name)
        if value is not None and value < 1.0:
            problem(name, f"{named(name)} = {value} must be 1.0 or more (1.0 turns classifier-free guidance off).")
    if s.flow_shift <= 0:
        problem("flow_shift", f"{named('flow_shift')} = {s.flow_shift} must be positive (Wan uses 3.0 at 480p, 5.0 "
                              f"at 720p).")
    if s.sampler not in SAMPLERS:
        problem("sampler", f"Unknown sampler `{s.sampler}`; choose one of: {', '.join(SAMPLERS)}.")
    if s.fps < 1:
        problem("fps", f"{named('fps')} = {s.fps} must be at least 1.")
    if s.image is not None and not Path(s.image).is_file():
        problem("image", f"The start image {s.image} does not exist; check its path.")
    return problems


def make_scheduler(sampler: str, flow_shift: float):
    """UniPC with flow sigmas (Wan's default) or the flow-matching Euler sampler, both shifted by `flow_shift`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       num_train_timesteps=1000, flow_shift=flow_shift)
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
    raise UserError(f"Unknown sampler `{sampler}`; choose one of: {', '.join(SAMPLERS)}.")

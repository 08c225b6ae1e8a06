"""Sample prompts file (musubi-tuner syntax): one prompt per line, options after the text.

    a red ball bouncing --w 64 --h 64 --f 5 --s 10 --d 42 --g 5.0 --n blurry, low quality

--w width, --h height, --f frames (4n+1; 1 = an image), --s steps, --d seed, --g guidance scale,
--n negative prompt (the rest of the line). Lines starting with # and blank lines are skipped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from backend.errors import UserError


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    width: int = 64
    height: int = 64
    frames: int = 5
    steps: int = 10
    seed: int = 42
    guidance_scale: float = 5.0
    negative_prompt: str = ""


_OPTION = re.compile(r"\s--(w|h|f|s|d|g|n)\s+")
_FIELDS = {"w": ("width", int), "h": ("height", int), "f": ("frames", int), "s": ("steps", int),
           "d": ("seed", int), "g": ("guidance_scale", float)}


def parse_prompt_line(line: str, source: str = "prompt") -> SamplePrompt:
    parts = _OPTION.split(" " + line.strip())
    values: dict = {"prompt": parts[0].strip()}
    for flag, raw in zip(parts[1::2], parts[2::2]):
        raw = raw.strip()
        if flag == "n":
            values["negative_prompt"] = raw
            continue
        name, cast = _FIELDS[flag]
        try:
            values[name] = cast(raw)
        except ValueError:
            raise UserError(f"{source}: --{flag} expects a number, got `{raw}`.") from None
    prompt = SamplePrompt(**values)
    if not prompt.prompt:
        raise UserError(f"{source}: the prompt text is empty; write the prompt before its options.")
    if (prompt.frames - 1) % 4:
        raise UserError(f"{source}: --f {prompt.frames} is not 4n+1; use {prompt.frames - (prompt.frames - 1) % 4}.")
    if prompt.width % 16 or prompt.height % 16:
        raise UserError(f"{source}: size {prompt.width}x{prompt.height} must be multiples of 16.")
    return prompt


def load_sample_prompts(path: str | Path) -> list[SamplePrompt]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sample prompts file {path} does not exist; create it or clear sample_prompts.")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            prompts.append(parse_prompt_line(line, f"{path.name} line {number}"))
    return prompts

"""`--from_file PROMPTS`: one prompt per line in musubi's syntax; a line's options override the command line's."""
from __future__ import annotations

import re
from pathlib import Path

from backend.errors import UserError
from backend.generate.options import named
from backend.generate.settings import GenerateSettings, validate
from backend.train.sample_prompts import parse_prompt_line

_FLAG = re.compile(r"\s--(w|h|f|s|d|g|n)\s")
_FIELDS = {"w": "width", "h": "height", "f": "frames", "s": "steps", "d": "seed", "g": "guidance_scale",
           "n": "negative_prompt"}


def settings_from_line(line: str, base: GenerateSettings, source: str) -> GenerateSettings:
    parsed = parse_prompt_line(line, source)
    given = {_FIELDS[flag] for flag in _FLAG.findall(" " + line.strip() + " ")}
    changes = {name: getattr(parsed, name) for name in given}
    return base.with_overrides(prompt=parsed.prompt, **changes)


def settings_from_file(path: str | Path, base: GenerateSettings) -> list[GenerateSettings]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"The prompts file {path} does not exist; check the {named('from_file')}.")
    batch = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            batch.append(validate(settings_from_line(line, base, f"{path.name} line {number}")))
    if not batch:
        raise UserError(f"The prompts file {path} holds no prompt lines; write one prompt per line.")
    return batch

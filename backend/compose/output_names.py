"""Output files of composing: default names (`demo-t2v+alice+bob.safetensors` for a merged DiT, `alice+bob
.safetensors` for a merged LoRA, `RUN-ema.safetensors` for a post-hoc EMA, made unique in their folder with `-2`,
`-3`, ...), the high-noise partner of a Wan2.2 A14B low-noise checkpoint (the same name with `high_noise` for
`low_noise`), and the check every output path passes before a job starts."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from backend.output_guard import check_output_file, free_name
from backend.models.registry import EXPERT_STEMS

PAIR_VARIANTS = tuple(f"-{stem}" for stem in EXPERT_STEMS.values())

MERGED_DIT_FOLDER = ("outputs", "merged")  # under the workspace; the Generate tab lists its *.safetensors
GENERIC_STEMS = {"transformer", "diffusion_pytorch_model", "model", *EXPERT_STEMS.values()}
NAMES_SHOWN = 3
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def free_path(folder: Path, stem: str, variants: Sequence[str] = ("",)) -> Path:
    """`folder/stem.safetensors`, or `stem-2`, `stem-3`, ... when a file `stem<variant>.safetensors` exists for some
    variant (an A14B pair writes `-high_noise` / `-low_noise` variants of the name)."""
    stem = _UNSAFE.sub("_", stem).strip("._") or "merged"
    name = free_name(Path(folder), stem, [f"{variant}.safetensors" for variant in variants])
    return Path(folder) / f"{name}.safetensors"


def model_label(base: Path) -> str:
    """A checkpoint's short name: its stem, or its folder's name for generic stems (`demo-t2v/transformer`)."""
    base = Path(base)
    return base.parent.name if base.stem in GENERIC_STEMS and base.parent.name else base.stem


def joined(paths: Sequence[Path]) -> str:
    stems = [Path(p).stem for p in paths]
    if len(stems) > NAMES_SHOWN:
        return "+".join(stems[:NAMES_SHOWN - 1]) + f"+{len(stems) - NAMES_SHOWN + 1}-more"
    return "+".join(stems)


def merged_dit_stem(base: Path | None, loras: Sequence[Path]) -> str:
    return "+".join(part for part in (model_label(base) if base else "", joined(loras)) if part) or "merged"


def merged_lora_stem(loras: Sequence[Path]) -> str:
    return joined(loras) or "merged"


def ema_stem(run_name: str) -> str:
    return f"{run_name}-ema"


def split_expert_stem(stem: str) -> tuple[str, str | None]:
    """(the stem without its `-high_noise` / `-low_noise` ending, that expert), or (the stem, None)."""
    for expert, expert_stem in EXPERT_STEMS.items():
        if stem.endswith(f"-{expert_stem}"):
            return stem[: -len(expert_stem) - 1], expert
    return stem, None


def high_noise_partner(low_noise: Path) -> Path | None:
    """The high-noise checkpoint beside a low-noise one, when a file of the partner name exists."""
    low_noise = Path(low_noise)
    low, high = EXPERT_STEMS["low"], EXPERT_STEMS["high"]
    if low not in low_noise.name:
        return None
    partner = low_noise.with_name(low_noise.name.replace(low, high))
    return partner if partner.is_file() else None


def check_output(out: Path, overwrite: bool, inputs: Sequence[Path], lora_output: bool = False) -> None:
    """A .safetensors file name that is a name, no input, no model where a LoRA goes, and no existing file unless
    overwriting was asked (backend/output_guard.py; the same check on the command line and in the app)."""
    check_output_file(Path(out), workspace=None, inputs=inputs, overwrite=overwrite, lora_output=lora_output)

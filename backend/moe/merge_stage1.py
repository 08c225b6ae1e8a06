"""The merge step: fold the stage-1 LoRA into both DiT files of a Wan2.2 A14B pair (or the one file of a single
model) with the streaming merge, at one multiplier, in one call. Stage 2 then trains on the merged files.

Outputs follow the merged-model convention the Generate tab lists: `<out_dir>/<name>-high_noise.safetensors` and
`<name>-low_noise.safetensors` (a single model: `<name>.safetensors`); default out_dir = the workspace's
`outputs/merged`, default name = the stage-1 LoRA's name without its `-low_noise` / `-high_noise` ending. Each file
records the stage-1 LoRA's sha256 and multiplier in its header.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backend.compose.merge_dit import MergeResult, merge_into_dit
from backend.errors import UserError
from backend.models.registry import EXPERT_STEMS


def base_name(lora: Path) -> str:
    stem = Path(lora).stem
    for expert_stem in EXPERT_STEMS.values():
        if stem.endswith(f"-{expert_stem}"):
            return stem[:-len(expert_stem) - 1]
    return stem


@dataclass(frozen=True)
class Stage1Merge:
    lora: Path
    out_dir: Path
    dit: Path | None = None  # low-noise (A14B) or the single model
    dit_high_noise: Path | None = None
    lora_high_noise: Path | None = None  # a separate stage-1 LoRA for the high-noise expert (expert=both runs)
    multiplier: float = 1.0
    device: str = "cpu"
    dtype: str = "same"
    name: str = ""  # default: base_name(lora)

    def plan(self) -> list[tuple[str | None, Path, Path, Path]]:
        """[(expert, dit, lora, out)]."""
        if self.dit is None:
            raise UserError("no DiT to merge into; pass --dit (and --dit_high_noise for an A14B pair).")
        name = self.name or base_name(self.lora)
        if self.dit_high_noise is None:
            return [(None, self.dit, self.lora, self.out_dir / f"{name}.safetensors")]
        if Path(self.dit).resolve() == Path(self.dit_high_noise).resolve():
            raise UserError("The low-noise and the high-noise DiT are the same file; give one file of each expert.")
        return [("high", self.dit_high_noise, self.lora_high_noise or self.lora,
                 self.out_dir / f"{name}-{EXPERT_STEMS['high']}.safetensors"),
                ("low", self.dit, self.lora, self.out_dir / f"{name}-{EXPERT_STEMS['low']}.safetensors")]


def merge_stage1(request: Stage1Merge, progress: Callable[[str, int, int], None] | None = None) -> list[MergeResult]:
    plan = request.plan()
    for _, dit, _, out in plan:
        if Path(out).resolve() == Path(dit).resolve():
            raise UserError(f"the output {out} is the DiT itself; choose another output folder or name.")
    request.out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for expert, dit, lora, out in plan:
        label = expert or "model"

        def report(done: int, total: int, label=label) -> None:
            if progress is not None:
                progress(label, done, total)

        results.append(merge_into_dit(dit, [lora], [request.multiplier], out, device=request.device,
                                      dtype=request.dtype, expert=expert, progress=report))
    return results

"""Finding and ordering a run's checkpoints for post-hoc EMA.

A folder argument contributes every `*.safetensors` under it, sub-folders included (`*-state` folders, epoch
folders). Files there that are not LoRA files (optimizer or accelerate state) and earlier EMA outputs are skipped
with a note (screened by their header first, so a model file lying in the folder is never loaded); a file named
explicitly must be a LoRA file. Checkpoints are ordered by the training step their header
records (`loraid_studio.step`, else musubi's `ss_steps`). Files holding the same weights are one checkpoint (the
final file beside its last step file, a copy inside a state folder): counted once. Two files claiming the same step
with different weights are an error. When some file records no step, all are ordered by modification time, with a
warning, and treated as evenly spaced.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from backend.adapters.formats import LoraFile, load_lora
from backend.errors import UserError
from backend.loraid.file_coverage import modules_from_canonical_keys, read_lora_header
from backend.models.registry import expert_in_name
from backend.train.debris import is_debris

EMA_KEY = "loraid_studio.ema"
_LORA_WORDS = ("lora_down", "lora_up", "lora_A", "lora_B", "hada_w", "lokr_w")


@dataclass
class Checkpoint:
    path: Path
    lora: LoraFile
    step: int | None
    mtime: float
    fingerprint: str


@dataclass
class RunCheckpoints:
    checkpoints: list[Checkpoint]
    steps: list[int]  # real steps, or 1..T when ordered by modification time
    steps_known: bool
    notes: list[str]


def fingerprint(lora: LoraFile) -> str:
    digest = hashlib.sha256()
    for key in sorted(lora.tensors):
        tensor = lora.tensors[key].float().contiguous()
        digest.update(key.encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).numpy().tobytes())
    return digest.hexdigest()


def _candidates(inputs: Sequence[str | Path], exclude: Path | None) -> list[tuple[Path, bool]]:
    found: list[tuple[Path, bool]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += [(path, False) for path in sorted(item.rglob("*.safetensors")) if not is_debris(path)]
        elif item.is_file():
            found.append((item, True))
        else:
            raise UserError(f"{item} does not exist; pass a run folder or checkpoint files.")
    seen, unique = set(), []
    for path, explicit in found:
        key = path.resolve()
        if key not in seen and (exclude is None or key != exclude.resolve()):
            seen.add(key)
            unique.append((path, explicit))
    return unique


def _looks_like_lora(path: Path) -> bool:
    """From the header alone: canonical LoRA keys, or keys naming LoRA-family factors in another layout."""
    keys, _ = read_lora_header(path)
    if modules_from_canonical_keys(keys) is not None:
        return True
    return any(word in key for key in keys for word in _LORA_WORDS)


def _read(path: Path, explicit: bool, notes: list[str]) -> Checkpoint | None:
    if not explicit and not _looks_like_lora(path):
        notes.append(f"skipped {path.name}: not a LoRA checkpoint")
        return None
    try:
        lora = load_lora(path)
    except UserError as exc:
        if explicit:
            raise
        notes.append(f"skipped {path.name}: not a LoRA checkpoint ({exc})")
        return None
    if EMA_KEY in lora.metadata:
        if explicit:
            raise UserError(f"{path.name} is already a post-hoc EMA result; average the run's checkpoints instead.")
        notes.append(f"skipped {path.name}: an earlier EMA result")
        return None
    return Checkpoint(path, lora, lora.info["step"], path.stat().st_mtime, fingerprint(lora))


def _dedupe(checkpoints: list[Checkpoint], notes: list[str]) -> list[Checkpoint]:
    kept: dict[str, Checkpoint] = {}
    for checkpoint in sorted(checkpoints, key=lambda c: (len(c.path.parts), str(c.path))):
        twin = kept.get(checkpoint.fingerprint)
        if twin is None:
            kept[checkpoint.fingerprint] = checkpoint
        else:
            notes.append(f"{checkpoint.path.name} holds the same weights as {twin.path.name}; counted once")
    return list(kept.values())


def expert_of(checkpoint: Checkpoint) -> str | None:
    """high / low for a Wan2.2 A14B expert's checkpoint (header, else a `-high_noise` / `_low_noise` name)."""
    metadata = checkpoint.lora.metadata
    recorded = metadata.get("loraid_studio.expert") or (checkpoint.lora.info["allocation"] or {}).get("expert")
    if recorded in ("high", "low"):
        return recorded
    return expert_in_name(checkpoint.path.stem)[1]


def _one_expert(checkpoints: list[Checkpoint]) -> None:
    experts = {expert_of(c) for c in checkpoints}
    if len(experts) > 1:
        raise UserError("The checkpoints belong to different Wan2.2 experts (high- and low-noise); run ema once per "
                        "expert, e.g. on the `*-high_noise.safetensors` files, then on the `*-low_noise` ones.")


def find_checkpoints(inputs: Sequence[str | Path], exclude: str | Path | None = None) -> RunCheckpoints:
    notes: list[str] = []
    read = [_read(path, explicit, notes) for path, explicit in _candidates(inputs, Path(exclude) if exclude else None)]
    checkpoints = _dedupe([c for c in read if c is not None], notes)
    _one_expert(checkpoints)
    if len(checkpoints) < 2:
        raise UserError(f"Post-hoc EMA needs at least two different checkpoints; found {len(checkpoints)} in "
                        f"{', '.join(map(str, inputs))}.")
    if all(c.step is not None for c in checkpoints):
        checkpoints.sort(key=lambda c: c.step)
        for a, b in zip(checkpoints, checkpoints[1:]):
            if a.step == b.step:
                raise UserError(f"{a.path.name} and {b.path.name} both say training step {a.step} but hold different "
                                f"weights; pass the files of one run.")
        return RunCheckpoints(checkpoints, [c.step for c in checkpoints], True, notes)
    missing = sum(c.step is None for c in checkpoints)
    notes.append(f"warning: {missing} of {len(checkpoints)} checkpoints record no training step; ordered by "
                 f"modification time and treated as evenly spaced")
    checkpoints.sort(key=lambda c: (c.mtime, str(c.path)))
    return RunCheckpoints(checkpoints, list(range(1, len(checkpoints) + 1)), False, notes)

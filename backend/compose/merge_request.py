"""A merge the user asked for, checked before it becomes a job, and the `python -m backend ...` arguments that run it.

`DitMerge` folds LoRAs into a base DiT (`merge`); on a Wan2.2 A14B pair each expert gets the LoRAs that go on it and
its own output (`NAME-high_noise.safetensors`, `NAME-low_noise.safetensors`); an expert that no LoRA goes on is left
as it is. `LoraMerge` merges LoRA files into one (`merge-loras`). `check()` raises a UserError (one sentence) for
anything the job would refuse, so bad input is reported before a job starts and nothing is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from backend.compose.merge_dit import open_checkpoint
from backend.compose.merge_plan import BOTH, Pick, conflicts_per_transformer, roles
from backend.compose.output_names import check_output, split_expert_stem
from backend.compose.settings import MergeLorasSettings, MergeSettings
from backend.config.field_checks import checked, label_of
from backend.errors import UserError
from backend.loraid.cli_args import resolve_multipliers
from backend.loraid.file_coverage import coverage_of_file
from backend.loraid.overlap import overlap_message
from backend.models.names import lora_key_prefix
from backend.models.registry import EXPERT_STEMS

FORCE_HINT = "tick “Allow overlap” to merge them anyway (their changes add up on the shared weights)"
_DIT = MergeSettings.field_info()  # the starting values of the options a request does not set
_LORAS = MergeLorasSettings.field_info()


def expert_output(out: Path, expert: str) -> Path:
    """`merged.safetensors` -> `merged-high_noise.safetensors` / `merged-low_noise.safetensors`."""
    return out.with_name(f"{out.stem}-{EXPERT_STEMS[expert]}{out.suffix}")


def pair_output(expert_file: Path) -> Path:
    """The name an expert's output derives from: `merged-low_noise.safetensors` -> `merged.safetensors`."""
    stem, expert = split_expert_stem(expert_file.stem)
    return expert_file.with_name(f"{stem}{expert_file.suffix}") if expert else expert_file


def _strengths_of(files: list[str], multipliers: list[float], label: str) -> dict[str, float]:
    try:
        return dict(zip(files, resolve_multipliers(len(files), multipliers)))
    except UserError:
        raise UserError(f"{len(multipliers)} {label} are given for {len(files)} LoRA files; give one value for all "
                        "or one per file.") from None


def check_overlaps(picks: Sequence[Pick], pair: bool, allow_overlap: bool) -> list[str]:
    """The merge guard, per transformer: a UserError unless allowed; returns the allowed conflicts as warnings."""
    warnings = []
    for role, conflicts in conflicts_per_transformer(picks, pair).items():
        if conflicts and not allow_overlap:
            raise UserError(overlap_message(conflicts, FORCE_HINT))
        warnings += [conflict.describe() for conflict in conflicts]
    return warnings


def _check_base(path: Path | None, what: str) -> Path:
    if path is None or not str(path).strip():
        raise UserError(f"No {what} is chosen; pick the demo model or type the path of a .safetensors checkpoint.")
    if not path.exists():
        raise UserError(f"The {what} {path} does not exist; pick the demo model or type the path of a "
                        f".safetensors checkpoint.")
    return path


def _check_targets(base: Path, picks: Sequence[Pick]) -> None:
    """Every module of every LoRA must find its weight in the base (read from headers, no weight is loaded)."""
    present = open_checkpoint(base).by_wan_param
    for pick in picks:
        missing = sorted(m for m in coverage_of_file(pick.path) if f"{m}.weight" not in present)
        if missing:
            raise UserError(f"{pick.path.name} changes `{lora_key_prefix(missing[0])}`, which {base.name} does not "
                            f"have; the LoRA was trained for another model, so pick its base model.")


@dataclass(frozen=True)
class DitMerge:
    picks: list[Pick]
    base: Path | None
    out: Path
    base_high: Path | None = None  # set for a Wan2.2 A14B pair: `base` is then the low-noise expert
    dtype: str = _DIT["dtype"]["default"]
    device: str = _DIT["device"]["default"]
    allow_overlap: bool = _DIT["allow_overlap"]["default"]
    overwrite: bool = _DIT["overwrite"]["default"]

    @property
    def pair(self) -> bool:
        return self.base_high is not None

    def bases(self) -> dict[str, Path]:
        return {"high": self.base_high, "low": self.base} if self.pair else {"model": self.base}

    def on(self, role: str) -> list[Pick]:
        return [pick for pick in self.picks if pick.goes_on(role)]

    def outputs(self) -> dict[str, Path]:
        """role -> the file it writes (only the transformers some LoRA goes on)."""
        if not self.pair:
            return {"model": self.out}
        return {role: expert_output(self.out, role) for role in roles(True) if self.on(role)}

    def check(self) -> list[str]:
        """Raise a UserError for bad input; return warnings (overlaps the user allowed)."""
        if not self.picks:
            raise UserError("No LoRA file is picked; choose at least one from the list or type its path.")
        bases = {role: _check_base(path, "high-noise expert" if role == "high" else "base DiT")
                 for role, path in self.bases().items()}
        if self.pair and bases["high"].resolve() == bases["low"].resolve():
            raise UserError("The high-noise and low-noise experts are the same file; pick each expert's checkpoint.")
        outputs = self.outputs()
        if not outputs:
            raise UserError("No LoRA goes on either expert; set each row's expert to high, low or both.")
        self.settings()  # the options' own rules: choices, and what this machine has
        warnings = check_overlaps(self.picks, self.pair, self.allow_overlap)
        inputs = [*bases.values(), *(pick.path for pick in self.picks)]
        for role, out in outputs.items():
            check_output(out, self.overwrite, inputs)
            _check_targets(bases[role], self.on(role))
        return warnings

    def settings(self) -> MergeSettings:
        """The `merge` job's settings: the low-noise expert (or the single model) first, the high-noise one in the
        `_high_noise` fields."""
        outputs, bases = self.outputs(), self.bases()
        first = "low" if "low" in outputs else next(iter(outputs))
        values = {"dit": str(bases[first]), "lora": self._files(first), "multiplier": self._strengths(first),
                  "out": str(outputs[first])}
        if self.pair and first == "low" and "high" in outputs:
            values |= {"dit_high_noise": str(bases["high"]), "lora_high_noise": self._files("high"),
                       "multiplier_high_noise": self._strengths("high"), "out_high_noise": str(outputs["high"])}
        options = {"dtype": self.dtype, "device": self.device, "allow_overlap": self.allow_overlap,
                   "overwrite": self.overwrite}
        return checked(MergeSettings, values | options, label_of(MergeSettings))

    def arguments(self) -> list[str]:
        """The arguments after `python -m backend`."""
        return ["merge", *self.settings().flag_arguments()]

    @classmethod
    def from_settings(cls, settings: MergeSettings) -> "DitMerge":
        """The merge `settings` describe (the inverse of `settings()`): on a pair, a file in both experts' lists is
        one pick for both, and the output is the name both experts' files derive from. Settings that merge only the
        high-noise expert are that expert merged alone, which writes the same file."""
        low = _strengths_of(settings.lora, settings.multiplier, "strengths")
        options = dict(dtype=settings.dtype, device=settings.device, allow_overlap=settings.allow_overlap,
                       overwrite=settings.overwrite)
        if settings.dit_high_noise is None:
            return cls([Pick(Path(file), value) for file, value in low.items()], Path(settings.dit),
                       Path(settings.out), **options)
        high = _strengths_of(settings.lora_high_noise, settings.multiplier_high_noise, "high-noise strengths")
        picks, waiting = [], list(high)  # in the order of both lists: a file on both experts joins them
        for file, value in low.items():
            if file in high:
                while waiting and waiting[0] != file:
                    picks.append(Pick(Path(waiting[0]), high[waiting.pop(0)], "high"))
                waiting = waiting[1:] if waiting else waiting
            picks.append(Pick(Path(file), value, BOTH if file in high else "low"))
        picks += [Pick(Path(file), high[file], "high") for file in waiting if file not in low]
        return cls(picks, Path(settings.dit), pair_output(Path(settings.out)), Path(settings.dit_high_noise),
                   **options)

    def _files(self, role: str) -> list[str]:
        return [str(pick.path) for pick in self.on(role)]

    def _strengths(self, role: str) -> list[float]:
        return [pick.multiplier for pick in self.on(role)]


@dataclass(frozen=True)
class LoraMerge:
    picks: list[Pick]
    out: Path
    rank: int | None = _LORAS["rank"]["default"]  # None: exact (ranks concatenated); else resized by SVD
    precision: str = _LORAS["precision"]["default"]
    allow_overlap: bool = _LORAS["allow_overlap"]["default"]
    overwrite: bool = _LORAS["overwrite"]["default"]

    def outputs(self) -> dict[str, Path]:
        return {"model": self.out}

    def check(self) -> list[str]:
        if len(self.picks) < 2:
            raise UserError(f"Merging LoRAs into one needs at least two files; {len(self.picks)} "
                            f"{'is' if len(self.picks) == 1 else 'are'} picked.")
        self.settings()  # the options' own rules (rank, precision)
        warnings = check_overlaps(self.picks, False, self.allow_overlap)
        check_output(self.out, self.overwrite, [pick.path for pick in self.picks], lora_output=True)
        return warnings

    def settings(self) -> MergeLorasSettings:
        return checked(MergeLorasSettings, 
            {"lora": [str(pick.path) for pick in self.picks], "multiplier": [pick.multiplier for pick in self.picks],
             "out": str(self.out), "rank": self.rank, "precision": self.precision, "allow_overlap": self.allow_overlap,
             "overwrite": self.overwrite}, label_of(MergeLorasSettings))

    def arguments(self) -> list[str]:
        return ["merge-loras", *self.settings().flag_arguments()]

    @classmethod
    def from_settings(cls, settings: MergeLorasSettings) -> "LoraMerge":
        """The merge `settings` describe (the inverse of `settings()`)."""
        picks = [Pick(Path(file), value) for file, value in
                 _strengths_of(settings.lora, settings.multiplier, "strengths").items()]
        return cls(picks, Path(settings.out), settings.rank, settings.precision, settings.allow_overlap,
                   settings.overwrite)

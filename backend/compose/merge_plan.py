"""What a merge looks like before it runs: the picked LoRA files with their inspect summary, strength and expert
(one table row each), which transformer each goes on, and the overlaps the merge guard would refuse.

Paths typed by a user are read relative to the workspace folder. A table row's `file` is the path relative to the
workspace when the file lies inside it, else the absolute path, so a row always names its file. On a Wan2.2 A14B pair
a LoRA goes on the expert its header records (allocation or `loraid_studio.expert`, else a `-high_noise` /
`-low_noise` file name, or ai-toolkit's `_high_noise` / `_low_noise`), or on both when it records none; the user may
change that per row.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from backend.adapters.formats import load_lora
from backend.adapters.inspect_cli import describe
from backend.errors import UserError
from backend.loraid.file_coverage import coverages_of_files, read_lora_header
from backend.loraid.overlap import Conflict, find_overlaps
from backend.models.registry import EXPERTS, expert_in_name

TABLE_HEADERS = ["file", "algorithm", "rank", "LORAID", "blocks", "expert", "multiplier"]
FILE, EXPERT, MULTIPLIER = 0, 5, 6
BOTH = "both"
NO_EXPERT = "-"  # the expert cell of a row for a single-transformer base
ROLE_LABELS = {"model": "", "high": "high-noise expert", "low": "low-noise expert"}


@dataclass(frozen=True)
class Pick:
    """One LoRA of a merge: its file, strength, and the expert it goes on (None: a single-transformer base)."""
    path: Path
    multiplier: float
    expert: str | None = None

    def goes_on(self, role: str) -> bool:
        return role == "model" or self.expert in (role, BOTH)


def workspace_path(root: Path, text: str) -> Path:
    path = Path(str(text).strip().strip('"')).expanduser()
    return path if path.is_absolute() else Path(root) / path


def display_path(root: Path, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def typed_paths(root: Path, text: str | None) -> list[Path]:
    """One path per line (blank lines ignored), relative to the workspace unless absolute."""
    return [workspace_path(root, line) for line in (text or "").splitlines() if line.strip().strip('"')]


def lora_files(root: Path, loras_folder: Path, names: Iterable[str] | None, typed: str | None) -> list[Path]:
    """Files picked from the workspace's loras/ by name plus typed paths; each must be an existing .safetensors."""
    paths = [Path(loras_folder) / name for name in names or []] + typed_paths(root, typed)
    for path in paths:
        if not path.is_file():
            raise UserError(f"The LoRA file {path} does not exist; pick a file from the list or check the path.")
        if path.suffix != ".safetensors":
            raise UserError(f"{path.name} is not a .safetensors file; LoRA files are read from .safetensors only.")
    return list(dict.fromkeys(path.resolve() for path in paths))


@lru_cache(maxsize=256)
def _summary(path: str, mtime_ns: int, size: int) -> dict:
    return describe(load_lora(path, allow_nonfinite=True))


def summary_of(path: Path) -> dict:
    """`python -m backend inspect --json` of the file (cached while the file is unchanged)."""
    stat = Path(path).stat()
    return _summary(str(path), stat.st_mtime_ns, stat.st_size)


def recorded_expert(path: Path) -> str | None:
    """high / low when the file says which Wan2.2 expert it was trained for, else None (read from the header)."""
    _, metadata = read_lora_header(path)
    allocation = metadata.get("loraid_allocation")
    expert = json.loads(allocation).get("expert") if allocation else None
    expert = expert if expert in EXPERTS else metadata.get("loraid_studio.expert")
    if expert in EXPERTS:
        return expert
    return expert_in_name(Path(path).stem)[1]


def _rank_text(info: dict) -> str:
    low, high = info["ranks"]["min"], info["ranks"]["max"]
    return "full" if low is None else str(low) if low == high else f"{low}-{high}"


def _blocks_text(info: dict) -> str:
    parts = [f"blocks {info['blocks_compact']}"] if info["blocks"] else []
    return ", ".join(parts + info["top_level_modules"]) or "none"


def table_rows(root: Path, paths: Sequence[Path], previous: Sequence[Sequence] | None, pair: bool) -> list[list]:
    """One row per file (TABLE_HEADERS); multipliers and experts already typed for a file are kept."""
    kept = {str(row[FILE]): row for row in previous or [] if row and str(row[FILE]).strip()}
    rows = []
    for path in paths:
        label = display_path(root, path)
        info = summary_of(path)
        before = kept.get(label)
        expert = NO_EXPERT
        if pair:
            typed = str(before[EXPERT]) if before else ""
            expert = typed if typed in (BOTH, *EXPERTS) else recorded_expert(path) or BOTH
        multiplier = before[MULTIPLIER] if before and str(before[MULTIPLIER]).strip() != "" else 1.0
        loraid = info["loraid"] if info["loraid"] is not None else "-"
        rows.append([label, info["algo"], _rank_text(info), str(loraid), _blocks_text(info), expert, multiplier])
    return rows


def _multiplier(value, name: str) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise UserError(f"The multiplier `{value}` of {name} is not a number; type a strength such as 1.0 or 0.7.") \
            from None
    if number != number or number in (float("inf"), float("-inf")):
        raise UserError(f"The multiplier of {name} must be a finite number; type a strength such as 1.0 or 0.7.")
    return number


def picks_from_rows(root: Path, rows: Sequence[Sequence] | None, pair: bool) -> list[Pick]:
    """The table read back: each row's file, multiplier and (on an A14B pair) expert, checked."""
    picks = []
    for row in rows or []:
        if not row or not str(row[FILE]).strip():
            continue
        path = workspace_path(root, str(row[FILE])).resolve()
        if not path.is_file():
            raise UserError(f"The LoRA file {path} does not exist any more; refresh the list and pick it again.")
        expert = None
        if pair:
            expert = str(row[EXPERT]).strip().lower()
            if expert not in (BOTH, *EXPERTS):
                raise UserError(f"The expert `{row[EXPERT]}` of {path.name} is not one of high, low or both; type "
                                f"the Wan2.2 expert the LoRA goes on.")
        picks.append(Pick(path, _multiplier(row[MULTIPLIER], path.name), expert))
    return picks


def roles(pair: bool) -> tuple[str, ...]:
    return EXPERTS if pair else ("model",)


def conflicts_per_transformer(picks: Sequence[Pick], pair: bool) -> dict[str, list[Conflict]]:
    """role -> the module-level overlaps among the LoRAs that go on that transformer (the merge guard's rule)."""
    found = {}
    for role in roles(pair):
        paths = [pick.path for pick in picks if pick.goes_on(role)]
        found[role] = find_overlaps(coverages_of_files(paths)) if len(paths) > 1 else []
    return found


def overlap_lines(picks: Sequence[Pick], pair: bool) -> list[str]:
    """One sentence per overlapping pair of LoRAs, naming the transformer on an A14B pair."""
    lines = []
    for role, conflicts in conflicts_per_transformer(picks, pair).items():
        where = f"On the {ROLE_LABELS[role]}: " if ROLE_LABELS[role] else ""
        lines += [f"{where}{conflict.describe()}." for conflict in conflicts]
    return lines

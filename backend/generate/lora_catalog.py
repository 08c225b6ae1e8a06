"""The LoRAs a generation can pick, read from their safetensors headers only (fast on a folder of large files):
each file's LORAID, the blocks it changes, its expert on a Wan2.2 A14B pair, its algorithm and rank; and the overlap
guard of the generate engine, run on the chosen files before any job starts.

A file goes on the transformer its allocation names (the high- or low-noise expert) or on every transformer when it
names none, exactly as `backend.generate.loras.by_transformer` places it when the job runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from backend.adapters.metadata import parse_metadata
from backend.errors import UserError
from backend.loraid.allocation import compact_ranges
from backend.loraid.file_coverage import allocation_from_header, coverage_of_file, modules_from_canonical_keys, \
    read_lora_header
from backend.loraid.module_names import blocks_of
from backend.loraid.overlap import find_overlaps
from backend.models.names import block_index
from backend.models.registry import EXPERTS

ALLOW_OVERLAP_HINT = "tick “Allow overlap” to apply them anyway (their changes add up on the shared weights)"
EXPERT_LABELS = {"high": "high-noise expert", "low": "low-noise expert"}


@dataclass(frozen=True)
class LoraSummary:
    path: Path
    loraid: int | None
    blocks: tuple[int, ...]
    top_level: tuple[str, ...]  # modules outside the blocks (e.g. `head.head`)
    expert: str | None  # the Wan2.2 expert its allocation names, else None (every transformer)
    algo: str | None
    rank: int | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def blocks_text(self) -> str:
        parts = [f"block{'s' if len(self.blocks) != 1 else ''} {compact_ranges(self.blocks)}"] if self.blocks else []
        return ", ".join(parts + list(self.top_level)) or "no modules"

    def describe(self) -> str:
        """`LORAID 1 · blocks 0-1 · lora rank 4` (· high-noise expert)."""
        parts = [f"LORAID {self.loraid}" if self.loraid is not None else "no LORAID", self.blocks_text]
        kind = " ".join(str(part) for part in (self.algo, f"rank {self.rank}" if self.rank else None) if part)
        parts += [kind] if kind else []
        parts += [EXPERT_LABELS[self.expert]] if self.expert else []
        return " · ".join(parts)


@lru_cache(maxsize=512)
def _summary(path: str, mtime_ns: int, size: int) -> LoraSummary:
    keys, metadata = read_lora_header(path)
    modules = modules_from_canonical_keys(keys)
    if modules is None:  # another layout: read through the full loader
        modules = coverage_of_file(path)
    info = parse_metadata(metadata)
    allocation = allocation_from_header(metadata, modules)
    expert = (info["allocation"] or {}).get("expert")
    return LoraSummary(Path(path), allocation.loraid if allocation is not None else info["loraid"],
                       tuple(sorted(blocks_of(modules))), tuple(sorted(m for m in modules if block_index(m) is None)),
                       expert if expert in EXPERTS else None, info["algo"] or _algo_from_module(info["network_module"]),
                       info["rank"])


def _algo_from_module(network_module: str | None) -> str | None:
    return "lora" if network_module and "lora" in network_module else None


def summarize(path: str | Path) -> LoraSummary:
    """The header summary of one LoRA file (cached while the file is unchanged); a missing file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The LoRA file {path} does not exist; pick a file from the list or check the path.")
    if path.suffix != ".safetensors":
        raise UserError(f"{path.name} is not a .safetensors file; LoRA files are read from .safetensors only.")
    stat = path.stat()
    return _summary(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def catalog(folder: Path) -> list[LoraSummary]:
    """Every readable `*.safetensors` LoRA in `folder`, by name; unreadable files are left out of the list."""
    summaries = []
    for path in sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []:
        try:
            summaries.append(summarize(path))
        except UserError:
            continue
    return summaries


def placement(summaries: Sequence[LoraSummary], roles: Sequence[str]) -> dict[str, list[LoraSummary]]:
    """Role ("main", or "high" / "low") -> the LoRAs that go on it (the engine's rule)."""
    placed: dict[str, list[LoraSummary]] = {role: [] for role in roles}
    for summary in summaries:
        for role in [summary.expert] if summary.expert in placed else list(roles):
            placed[role].append(summary)
    return placed


def conflict_lines(paths: Sequence[Path], roles: Sequence[str]) -> list[str]:
    """One sentence per pair of chosen LoRAs that change the same weights on one transformer."""
    summaries = [summarize(path) for path in paths]
    names = [s.name for s in summaries]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise UserError(f"Two chosen LoRA files are named {duplicate}; rename one so each can be told apart.")
    lines = []
    for role, placed in placement(summaries, roles).items():
        where = f"On the {EXPERT_LABELS[role]}: " if role in EXPERT_LABELS and len(roles) > 1 else ""
        coverages = {summary.name: coverage_of_file(summary.path) for summary in placed}
        lines += [f"{where}{conflict.describe()}." for conflict in find_overlaps(coverages)]
    return lines


def check_overlaps(paths: Sequence[Path], roles: Sequence[str], allow_overlap: bool) -> list[str]:
    """The conflicts as warnings when allowed; otherwise a UserError naming them and how to go on."""
    lines = conflict_lines(paths, roles)
    if lines and not allow_overlap:
        raise UserError("; ".join(line.rstrip(".") for line in lines) + f"; {ALLOW_OVERLAP_HINT}.")
    return lines



def resolve_lora(root: Path, loras_folder: Path, value: str) -> Path:
    """A picker value: a file name in the workspace's loras/, else a path (relative to the workspace, or absolute)."""
    text = str(value).strip().strip('"')
    if (Path(loras_folder) / text).is_file() and Path(text).name == text:
        return (Path(loras_folder) / text).resolve()
    path = Path(text).expanduser()
    return (path if path.is_absolute() else Path(root) / path).resolve()


def picker_value(root: Path, loras_folder: Path, path: Path) -> str:
    """How the picker names a file: its name when it lies in loras/, else its path (relative to the workspace)."""
    path = Path(path)
    if path.parent.resolve() == Path(loras_folder).resolve():
        return path.name
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)

"""A dataset folder as the Dataset tab sees it: every subfolder (a few levels deep) that holds images or videos,
each scanned as a musubi-tuner `[[datasets]]` source of one kind, with per-item names relative to the folder.

The demo dataset keeps its concepts in `concept_a/images`, `concept_a/videos`, ...; scanning `datasets/demo`
finds those four sources, scanning `datasets/demo/concept_a` finds two.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from backend.data.media import media_kind
from backend.data.scan import MediaInfo, ScanReport, scan_folder
from backend.errors import UserError

MAX_DEPTH = 3  # subfolder levels below the chosen folder that are searched for media
MAX_FOLDERS = 2000  # folders looked at before the scan refuses (a typo like "/" must not walk the disk)
KIND_ORDER = ("image", "video")


def resolve_folder(text: str | None, base: Path) -> Path:
    """The folder the user typed (relative paths start at `base`), checked to exist."""
    typed = (text or "").strip().strip('"').strip("'")
    if not typed:
        raise UserError("No dataset folder is given; type or pick the folder that holds your images and videos.")
    path = Path(typed).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.exists():
        raise UserError(f"The folder {path} does not exist; check the path (relative paths start at {base}).")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder; choose the folder that holds your images and videos.")
    return path


@dataclass(frozen=True)
class MediaSource:
    """One folder and one kind: what a `[[datasets]]` entry with image_directory / video_directory reads."""
    folder: Path
    kind: str
    report: ScanReport
    shares_folder: bool  # the folder holds both kinds (two entries read it)

    def label(self, root: Path) -> str:
        return f"{relative_name(self.folder, root)} ({self.kind}s)"


@dataclass(frozen=True)
class Entry:
    """One readable media file with its name relative to the scanned folder (unique across sources)."""
    name: str
    item: MediaInfo
    source: MediaSource


@dataclass
class FolderScan:
    root: Path
    caption_extension: str
    sources: list[MediaSource] = field(default_factory=list)

    @property
    def entries(self) -> list[Entry]:
        return [Entry(relative_name(item.path, self.root), item, source)
                for source in self.sources for item in source.report.items]

    def entry(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise UserError(f"{name} is not in the last scan of {self.root}; scan the folder again.")

    def sources_by_label(self) -> dict[str, MediaSource]:
        return {source.label(self.root): source for source in self.sources}

    @property
    def missing_captions(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.item.caption is None]

    @property
    def unreadable(self) -> list[tuple[str, str]]:
        """(name, reason) for every file that could not be read."""
        return [(relative_name(path, self.root), reason)
                for source in self.sources for path, reason in source.report.unreadable]

    @property
    def duplicate_names(self) -> list[tuple[str, list[str]]]:
        """Files in one source that share a name stem (their caption and cache files would collide)."""
        return [(key, [relative_name(p, self.root) for p in paths])
                for source in self.sources for key, paths in source.report.duplicate_keys.items()]

    def counts(self) -> dict[str, int]:
        entries = self.entries
        return {"images": sum(e.item.kind == "image" for e in entries),
                "videos": sum(e.item.kind == "video" for e in entries),
                "folders": len({s.folder for s in self.sources}), "missing_captions": len(self.missing_captions),
                "unreadable": len(self.unreadable), "duplicate_names": len(self.duplicate_names)}

    def resolutions(self, kind: str) -> Counter:
        """How many items of `kind` have each size, as "WxH"."""
        return Counter(f"{e.item.width}x{e.item.height}" for e in self.entries if e.item.kind == kind)


def relative_name(path: Path, root: Path) -> str:
    try:
        name = path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
    return name if name != "." else root.name


def _media_folders(root: Path) -> list[tuple[Path, list[str]]]:
    """(folder, kinds found directly in it) for the root and its subfolders up to MAX_DEPTH, sorted by path."""
    found: list[tuple[Path, list[str]]] = []
    pending, visited = [(root, 0)], 0
    while pending:
        folder, depth = pending.pop()
        visited += 1
        if visited > MAX_FOLDERS:
            raise UserError(f"{root} has more than {MAX_FOLDERS} subfolders; choose the folder that holds the "
                            "dataset itself.")
        try:
            children = list(os.scandir(folder))
        except OSError as exc:
            if folder == root:
                raise UserError(f"The folder {root} cannot be read ({exc.strerror}); check its permissions.") from None
            continue
        kinds = {media_kind(Path(c.name)) for c in children if c.is_file()} - {None}
        if kinds:
            found.append((folder, [kind for kind in KIND_ORDER if kind in kinds]))
        if depth < MAX_DEPTH:
            pending += [(Path(c.path), depth + 1) for c in children
                        if c.is_dir(follow_symlinks=False) and not c.name.startswith(".")]
    return sorted(found, key=lambda pair: pair[0].as_posix())


def scan_tree(root: str | Path, caption_extension: str = ".txt") -> FolderScan:
    """Scan `root` and its subfolders: one source per (folder, kind) that holds media."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise UserError(f"The folder {root} does not exist; choose a folder with images or videos.")
    extension = (caption_extension or "").strip()
    if not extension.startswith(".") or len(extension) < 2:
        raise UserError(f"The caption extension {caption_extension!r} must start with a dot; write e.g. \".txt\".")
    scan = FolderScan(root, extension)
    for folder, kinds in _media_folders(root):
        for kind in kinds:
            report = scan_folder(folder, extension, kind)
            scan.sources.append(MediaSource(folder, kind, report, shares_folder=len(kinds) > 1))
    if not scan.sources:
        raise UserError(f"No images or videos were found in {root} or its subfolders ({MAX_DEPTH} levels deep); "
                        "choose the folder that holds them.")
    return scan


def dataset_folder_choices(datasets_root: Path) -> list[str]:
    """Suggested folders: each folder under the workspace's datasets/ and its concept subfolders."""
    if not datasets_root.is_dir():
        return []
    choices = []
    for folder in sorted(p for p in datasets_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        choices.append(str(folder))
        choices += [str(sub) for sub in sorted(folder.iterdir())
                    if sub.is_dir() and (sub / "dataset.toml").is_file()]
    return choices

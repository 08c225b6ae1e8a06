"""What a dataset folder or JSONL file holds: media found, their sizes / frame counts / fps, captions missing,
files that cannot be read (with the reason). Plain data for the Dataset tab; the cache uses the same listing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from backend.data.captions import caption_path_for, read_caption
from backend.data.media import MediaError, image_size, list_media, media_kind, probe_video
from backend.errors import UserError


@dataclass
class MediaInfo:
    key: str  # unique name of the item (file stem), names its cache files
    path: Path
    kind: str  # "image" | "video"
    caption: str | None  # None: no caption file / JSONL entry without a caption
    caption_path: Path | None  # None for JSONL captions
    width: int | None = None
    height: int | None = None
    frame_count: int | None = None  # videos (packets counted, no decoding)
    fps: float | None = None

    @property
    def duration(self) -> float | None:
        return self.frame_count / self.fps if self.frame_count and self.fps else None

    def to_dict(self) -> dict:
        return {"key": self.key, "path": str(self.path), "kind": self.kind, "caption": self.caption,
                "caption_path": str(self.caption_path) if self.caption_path else None, "width": self.width,
                "height": self.height, "frame_count": self.frame_count, "fps": self.fps, "duration": self.duration}


@dataclass
class ScanReport:
    source: Path
    items: list[MediaInfo] = field(default_factory=list)  # readable media
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    duplicate_keys: dict[str, list[Path]] = field(default_factory=dict)  # same stem twice: captions/caches collide

    @property
    def images(self) -> list[MediaInfo]:
        return [item for item in self.items if item.kind == "image"]

    @property
    def videos(self) -> list[MediaInfo]:
        return [item for item in self.items if item.kind == "video"]

    @property
    def missing_captions(self) -> list[Path]:
        return [item.path for item in self.items if item.caption is None]

    def summary(self) -> dict:
        return {"images": len(self.images), "videos": len(self.videos),
                "missing_captions": len(self.missing_captions), "unreadable": len(self.unreadable),
                "duplicate_keys": len(self.duplicate_keys)}

    def to_dict(self) -> dict:
        return {"source": str(self.source), "summary": self.summary(), "items": [i.to_dict() for i in self.items],
                "missing_captions": [str(p) for p in self.missing_captions],
                "unreadable": [{"path": str(p), "reason": r} for p, r in self.unreadable],
                "duplicate_keys": {k: [str(p) for p in v] for k, v in self.duplicate_keys.items()}}


def _probe(item: MediaInfo) -> None:
    if item.kind == "image":
        item.width, item.height = image_size(item.path)
    else:
        info = probe_video(item.path)
        item.width, item.height, item.frame_count, item.fps = info.width, info.height, info.frame_count, info.fps


def _collect(report: ScanReport, candidates: list[MediaInfo], probe: bool) -> ScanReport:
    seen: dict[tuple[str, str], list[Path]] = {}
    for item in candidates:
        seen.setdefault((item.kind, item.key), []).append(item.path)
        if not item.path.exists():
            report.unreadable.append((item.path, "file not found"))
            continue
        if probe:
            try:
                _probe(item)
            except MediaError as exc:
                report.unreadable.append((item.path, str(exc)))
                continue
        report.items.append(item)
    report.duplicate_keys = {key: paths for (_, key), paths in seen.items() if len(paths) > 1}
    return report


def scan_folder(folder: str | Path, caption_extension: str = ".txt", kind: str | None = None,
                probe: bool = True) -> ScanReport:
    """Media directly inside `folder` (`kind` "image"/"video" limits it to one kind, as a dataset entry does)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder {folder} does not exist; choose a folder with images or videos.")
    candidates = [MediaInfo(path.stem, path, media_kind(path), read_caption(path, caption_extension),
                            caption_path_for(path, caption_extension))
                  for path in list_media(folder, kind)]
    return _collect(ScanReport(folder), candidates, probe)


def read_jsonl_entries(path: str | Path) -> list[dict]:
    """The JSONL lines as dicts; a malformed line is an error naming its number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"JSONL file {path} does not exist; fix the path.")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path.name} line {number} is not valid JSON ({exc.msg}); fix that line.") from None
        if not isinstance(entry, dict):
            raise UserError(f"{path.name} line {number} is not a JSON object; write "
                            "{\"image_path\": ..., \"caption\": ...}.")
        entries.append({**entry, "_line": number})
    return entries


def scan_jsonl(path: str | Path, kind: str | None = None, probe: bool = True) -> ScanReport:
    """musubi-tuner metadata: `{"image_path": ..., "caption": ...}` or `{"video_path": ..., "caption": ...}` lines.
    Relative media paths are taken relative to the JSONL file's folder."""
    path = Path(path)
    candidates = []
    for entry in read_jsonl_entries(path):
        entry_kind = "video" if "video_path" in entry else "image" if "image_path" in entry else None
        if entry_kind is None:
            raise UserError(f"{path.name} line {entry['_line']} has neither image_path nor video_path; add one.")
        if kind is not None and entry_kind != kind:
            raise UserError(f"{path.name} line {entry['_line']} has {entry_kind}_path, but this is a {kind} dataset; "
                            f"use {kind}_path (or {kind}_jsonl_file for the other kind).")
        media = Path(str(entry[f"{entry_kind}_path"])).expanduser()
        media = media if media.is_absolute() else path.parent / media
        caption = entry.get("caption")
        candidates.append(MediaInfo(media.stem, media, entry_kind,
                                    caption.strip() if isinstance(caption, str) else None, None))
    return _collect(ScanReport(path), candidates, probe)


def scan_dataset(dataset, probe: bool = True) -> ScanReport:
    """The items of one resolved `[[datasets]]` entry (only its kind)."""
    if dataset.is_jsonl:
        return scan_jsonl(dataset.source, dataset.kind, probe)
    return scan_folder(dataset.source, dataset.caption_extension, dataset.kind, probe)

"""What a cache run must produce: one latent file per (item, frame window) and one text file per item, each with
the fingerprint that says whether an existing file is still current. No model is needed to plan."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.data.buckets import RESOLUTION_STEP, select_bucket
from backend.data.cache_files import FORMAT, fingerprint, latent_file_name, text_file_name
from backend.data.dataset_config import ResolvedDataset
from backend.data.frames import FrameWindow, windows_for
from backend.data.scan import MediaInfo, ScanReport, scan_dataset
from backend.errors import UserError


@dataclass(frozen=True)
class LatentTask:
    dataset: ResolvedDataset
    item: MediaInfo
    bucket: tuple[int, int]
    window: FrameWindow
    path: Path
    fingerprint: str


@dataclass(frozen=True)
class TextTask:
    dataset: ResolvedDataset
    item: MediaInfo
    path: Path
    fingerprint: str


def latent_settings(dataset: ResolvedDataset) -> dict:
    """The dataset settings that decide which latent files exist (recorded in the manifest)."""
    return {"kind": dataset.kind, "resolution": list(dataset.resolution), "enable_bucket": dataset.enable_bucket,
            "bucket_no_upscale": dataset.bucket_no_upscale, "target_frames": list(dataset.target_frames),
            "frame_extraction": dataset.frame_extraction, "frame_stride": dataset.frame_stride,
            "frame_sample": dataset.frame_sample, "max_frames": dataset.max_frames, "source_fps": dataset.source_fps}


def _source_stamp(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def list_dataset(dataset: ResolvedDataset, probe: bool) -> ScanReport:
    """The dataset's items; two files that would share cache files (same name stem) are an error."""
    report = scan_dataset(dataset, probe=probe)
    if report.duplicate_keys:
        key, paths = next(iter(report.duplicate_keys.items()))
        raise UserError(f"{dataset.label}: {', '.join(p.name for p in paths)} have the same name `{key}` and would "
                        "share caption and cache files; rename one of them.")
    return report


def plan_latents(dataset: ResolvedDataset, model_id: str, i2v: bool, report: ScanReport | None = None,
                 step: int = RESOLUTION_STEP) -> tuple[list[LatentTask], list[tuple[Path, str]]]:
    """(tasks, skipped items with the reason). `step`: the multiple bucket sizes must be (16 for the Wan2.1 VAE,
    32 for the Wan2.2 VAE's 16x compression)."""
    report = report or list_dataset(dataset, probe=True)
    skipped = list(report.unreadable)
    tasks = []
    for item in report.items:
        bucket = select_bucket((item.width, item.height), dataset.resolution, *dataset.bucketing, step)
        if min(bucket) < step:
            skipped.append((item.path, f"{item.width}x{item.height} is smaller than {step} px and "
                                       "bucket_no_upscale keeps it from being enlarged"))
            continue
        if bucket[0] % step or bucket[1] % step:
            skipped.append((item.path, f"its bucket {bucket[0]}x{bucket[1]} is not a multiple of {step} px, which "
                                       f"this VAE needs; set the dataset resolution to multiples of {step} or turn "
                                       "enable_bucket on"))
            continue
        windows = windows_for(dataset, item.frame_count or 1)
        if not windows:
            skipped.append((item.path, f"{item.frame_count} frames is fewer than every target_frames value "
                                       f"{list(dataset.target_frames)}"))
            continue
        stamp = _source_stamp(item.path) if item.path.is_file() else {"path": str(item.path.resolve())}
        for window in windows:
            name = latent_file_name(item.key, bucket, window.start, window.length, dataset.kind == "video")
            identity = {"format": FORMAT, "source": stamp, "bucket": list(bucket),
                        "frames": list(window.source_indices), "model": model_id, "i2v": i2v}
            tasks.append(LatentTask(dataset, item, bucket, window, dataset.cache_directory / name,
                                    fingerprint(identity)))
    return tasks, skipped


def plan_text(dataset: ResolvedDataset, model_id: str, max_sequence_length: int,
              report: ScanReport | None = None) -> list[TextTask]:
    report = report or list_dataset(dataset, probe=False)
    missing = report.missing_captions
    if missing:
        raise UserError(f"{dataset.label}: {len(missing)} item(s) have no caption (first: {missing[0].name}); write "
                        "their captions in the Dataset tab or remove those files, then cache again.")
    return [TextTask(dataset, item, dataset.cache_directory / text_file_name(item.key),
                     text_fingerprint(item.caption, model_id, max_sequence_length))
            for item in report.items]


def text_fingerprint(caption: str, model_id: str, max_sequence_length: int) -> str:
    return fingerprint({"format": FORMAT, "caption": caption, "model": model_id,
                        "max_sequence_length": max_sequence_length})

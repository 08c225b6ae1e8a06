"""What training would make of a scanned folder under the form's settings, before anything is cached: the buckets
at the chosen resolution (items per bucket, items dropped and why), the frame windows each extraction mode cuts
from a clip, and how many cache files a dataset TOML's cache folders hold."""
from __future__ import annotations

from dataclasses import dataclass, field

from backend.data.buckets import BucketAssignment, assign_buckets
from backend.data.cache_files import ARCHITECTURE, MANIFEST_NAME
from backend.data.dataset_config import DatasetConfig
from backend.data.dataset_folder import FolderScan
from backend.data.dataset_form import DatasetForm
from backend.data.frames import FRAME_EXTRACTION_MODES, FrameWindow, extract_windows, resample_indices


@dataclass(frozen=True)
class BucketRow:
    bucket: tuple[int, int]
    images: int
    videos: int
    video_windows: int  # latent files the videos give (one per frame window)
    upscaled: int
    mean_cropped: float  # share of the resized item cut away, averaged

    @property
    def label(self) -> str:
        return f"{self.bucket[0]}x{self.bucket[1]}"


@dataclass
class BucketSummary:
    rows: list[BucketRow] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)

    @property
    def kept(self) -> int:
        return sum(row.images + row.videos for row in self.rows)


def windows_for_form(frame_count: int, form: DatasetForm, mode: str | None = None) -> list[FrameWindow]:
    return extract_windows(frame_count, frame_extraction=mode or form.frame_extraction,
                           target_frames=form.target_frames, frame_stride=form.frame_stride,
                           frame_sample=form.frame_sample, max_frames=form.max_frames, source_fps=form.source_fps)


def _too_short(frame_count: int, form: DatasetForm) -> str:
    kept = len(resample_indices(frame_count, form.source_fps))
    resampled = f" ({kept} after resampling to 16 fps)" if form.source_fps else ""
    if form.frame_extraction == "full":
        return f"its {frame_count} frames{resampled} give no clip under frame_extraction \"full\""
    return (f"its {frame_count} frames{resampled} are fewer than the shortest target_frames "
            f"({min(form.target_frames)}); add a shorter length such as 1")


def bucket_summary(scan: FolderScan, form: DatasetForm) -> BucketSummary:
    """Buckets at the form's resolution; unreadable files and clips too short for any window are dropped."""
    general = form.checked_general()
    form.checked_video()
    summary = BucketSummary(dropped=list(scan.unreadable))
    windows: dict[str, int] = {}
    placeable = []
    for entry in scan.entries:
        if entry.item.kind == "video":
            count = len(windows_for_form(entry.item.frame_count or 0, form))
            if count == 0:
                summary.dropped.append((entry.name, _too_short(entry.item.frame_count or 0, form)))
                continue
            windows[entry.name] = count
        placeable.append((entry.name, (entry.item.width, entry.item.height)))
    # musubi-tuner buckets videos by aspect ratio whatever enable_bucket / bucket_no_upscale say
    images = assign_buckets([p for p in placeable if p[0] not in windows], general.resolution, general.enable_bucket,
                            general.bucket_no_upscale)
    videos = assign_buckets([p for p in placeable if p[0] in windows], general.resolution, True, False)
    summary.dropped += images.dropped + videos.dropped
    merged: dict[tuple[int, int], list] = {}
    for preview in (images, videos):
        for bucket, assigned in preview.buckets.items():
            merged.setdefault(bucket, []).extend(assigned)
    for bucket, assigned in sorted(merged.items()):
        summary.rows.append(_row(bucket, assigned, windows))
    return summary


def _row(bucket: tuple[int, int], assigned: list[BucketAssignment], windows: dict[str, int]) -> BucketRow:
    videos = [a for a in assigned if a.key in windows]
    return BucketRow(bucket, images=len(assigned) - len(videos), videos=len(videos),
                     video_windows=sum(windows[a.key] for a in videos),
                     upscaled=sum(a.scale > 1.0 + 1e-9 for a in assigned),
                     mean_cropped=sum(a.cropped_fraction for a in assigned) / len(assigned))


def windows_by_mode(frame_count: int, form: DatasetForm) -> dict[str, list[FrameWindow]]:
    """The windows every frame_extraction mode would cut from a clip of `frame_count` frames."""
    form.checked_video()
    return {mode: windows_for_form(frame_count, form, mode) for mode in FRAME_EXTRACTION_MODES}


def describe_indices(indices: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 8, 10, 12) -> "0-3, 8, 10, 12": consecutive runs of three or more collapse."""
    parts, run = [], []
    for index in indices:
        if run and index == run[-1] + 1:
            run.append(index)
            continue
        parts += _run_text(run)
        run = [index]
    parts += _run_text(run)
    return ", ".join(parts)


def _run_text(run: list[int]) -> list[str]:
    if len(run) >= 3:
        return [f"{run[0]}-{run[-1]}"]
    return [str(i) for i in run]


@dataclass(frozen=True)
class CacheCount:
    folder: str
    latent_files: int
    text_files: int
    complete: bool  # the latents run finished (its manifest is there)


def cache_counts(config: DatasetConfig) -> list[CacheCount]:
    """Cache files in each `[[datasets]]` entry's cache folder."""
    counts = []
    for dataset in config.resolved():
        folder = dataset.cache_directory
        names = [p.name for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
        counts.append(CacheCount(str(folder), sum(n.endswith(f"_{ARCHITECTURE}.safetensors") for n in names),
                                 sum(n.endswith(f"_{ARCHITECTURE}_te.safetensors") for n in names),
                                 MANIFEST_NAME in names))
    return counts

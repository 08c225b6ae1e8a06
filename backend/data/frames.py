"""Which frames of a clip each musubi-tuner `frame_extraction` mode trains on. Pure functions, no decoding.

A clip of N frames (after optional `source_fps` resampling to Wan's 16 fps) gives a list of windows; each window
is `length` consecutive frames of the resampled sequence starting at `start`, i.e. the original frame numbers in
`source_indices`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FRAME_EXTRACTION_MODES = ("head", "chunk", "slide", "uniform", "full")
WAN_FPS = 16.0
VAE_FRAME_STRIDE = 4  # Wan's VAE compresses time 4x: clips must have 4n+1 frames


@dataclass(frozen=True)
class FrameWindow:
    start: int  # position in the resampled frame sequence (names the cache file)
    length: int
    source_indices: tuple[int, ...]  # frame numbers in the original file

    def to_dict(self) -> dict:
        return asdict(self)


def resample_indices(frame_count: int, source_fps: float | None, target_fps: float = WAN_FPS) -> list[int]:
    """Original frame numbers kept when a clip recorded at `source_fps` is played at `target_fps`.

    Frames are dropped, never repeated, exactly as musubi-tuner does: a running position advances by
    target/source per source frame and a frame is kept when the integer part changes.
    """
    if source_fps is None:
        return list(range(frame_count))
    delta = target_fps / source_fps
    kept: list[int] = []
    position, previous = 0.0, -1
    for index in range(frame_count):
        target_index = int(position)
        position += delta
        if target_index != previous:
            previous = target_index
            kept.append(index)
    return kept


def round_down_4n1(frames: int) -> int:
    return (frames - 1) // VAE_FRAME_STRIDE * VAE_FRAME_STRIDE + 1


def rounding_note(target_frames) -> str | None:
    """One sentence when some target_frames are not 4n+1 (musubi-tuner rounds them down; so does this app)."""
    changed = [(v, round_down_4n1(v)) for v in sorted(set(target_frames)) if v >= 1 and round_down_4n1(v) != v]
    if not changed:
        return None
    pairs = ", ".join(f"{a} -> {b}" for a, b in changed)
    return f"target_frames are rounded down to 4n+1 as musubi-tuner does ({pairs})."


def window_starts(frame_count: int, mode: str, target_frames: tuple[int, ...] | list[int], frame_stride: int = 1,
                  frame_sample: int = 1, max_frames: int = 129) -> list[tuple[int, int]]:
    """(start, length) of every window, in musubi-tuner's order: by target frame count, then by start."""
    if mode not in FRAME_EXTRACTION_MODES:
        raise ValueError(f"unknown frame_extraction {mode!r}")
    targets = sorted({round_down_4n1(v) for v in target_frames if v >= 1})  # musubi-tuner's rounding
    if mode == "uniform" and frame_sample == 1:
        mode = "head"
    windows: list[tuple[int, int]] = []
    if mode == "full":
        length = round_down_4n1(min(frame_count, max_frames))
        return [(0, length)] if length >= 1 else []
    for length in targets:
        if frame_count < length:
            continue
        if mode == "head":
            starts = [0]
        elif mode == "chunk":
            starts = list(range(0, frame_count - length + 1, length))
        elif mode == "slide":
            starts = list(range(0, frame_count - length + 1, frame_stride))
        else:  # uniform: `frame_sample` starts spread evenly (truncated), duplicates removed
            starts = list(dict.fromkeys(int(s) for s in np.linspace(0, frame_count - length, frame_sample, dtype=int)))
        windows += [(start, length) for start in starts]
    return windows


def extract_windows(frame_count: int, *, frame_extraction: str = "head", target_frames=(1,), frame_stride: int = 1,
                    frame_sample: int = 1, max_frames: int = 129, source_fps: float | None = None,
                    target_fps: float = WAN_FPS) -> list[FrameWindow]:
    """The windows a clip of `frame_count` original frames yields under these dataset settings."""
    kept = resample_indices(frame_count, source_fps, target_fps)
    return [FrameWindow(start, length, tuple(kept[start:start + length]))
            for start, length in window_starts(len(kept), frame_extraction, target_frames, frame_stride,
                                               frame_sample, max_frames)]


def windows_for(dataset, frame_count: int) -> list[FrameWindow]:
    """`extract_windows` with a `ResolvedDataset`'s settings (images: one 1-frame window)."""
    if dataset.kind == "image":
        return [FrameWindow(0, 1, (0,))]
    return extract_windows(frame_count, frame_extraction=dataset.frame_extraction,
                           target_frames=dataset.target_frames, frame_stride=dataset.frame_stride,
                           frame_sample=dataset.frame_sample, max_frames=dataset.max_frames,
                           source_fps=dataset.source_fps)

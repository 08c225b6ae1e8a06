"""Aspect-ratio bucketing as musubi-tuner does it, plus a preview of where each item lands.

With `enable_bucket`, the bucket list holds every (w, h) in steps of 16 whose area is about the target area
(resolution w·h); an item goes to the bucket nearest its aspect ratio, is resized to cover it and centre-cropped.
With `bucket_no_upscale`, an item no larger than the target area keeps its own size rounded down to 16.
Without `enable_bucket`, every item is resized and cropped to `resolution`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

RESOLUTION_STEP = 16


def _round_down(value: int, step: int) -> int:
    return value - value % step


def bucket_resolutions(resolution: tuple[int, int], step: int = RESOLUTION_STEP) -> list[tuple[int, int]]:
    """All bucket sizes (w, h) for this target resolution, sorted."""
    area = resolution[0] * resolution[1]
    sqrt_size = int(math.sqrt(area))
    min_size = max(step, _round_down(sqrt_size // 2, step))
    sizes: set[tuple[int, int]] = set()
    for width in range(min_size, sqrt_size + step, step):
        height = _round_down(area // width, step)
        sizes.add((width, height))
        sizes.add((height, width))
    return sorted(sizes)


def select_bucket(size: tuple[int, int], resolution: tuple[int, int], enable_bucket: bool = True,
                  no_upscale: bool = False, step: int = RESOLUTION_STEP) -> tuple[int, int]:
    """The bucket (w, h) an item of `size` (w, h) goes to."""
    if not enable_bucket:
        return tuple(resolution)
    width, height = size
    if no_upscale and width * height <= resolution[0] * resolution[1]:
        return _round_down(width, step), _round_down(height, step)
    aspect = width / height
    candidates = bucket_resolutions(resolution, step)
    return min(candidates, key=lambda wh: abs(wh[0] / wh[1] - aspect))  # first of equals, as numpy's argmin


def cover_size(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int]:
    """The size an item is resized to before the centre crop: the smallest scaling that covers the bucket."""
    width, height = size
    scale = max(bucket[0] / width, bucket[1] / height)
    return int(width * scale + 0.5), int(height * scale + 0.5)


@dataclass(frozen=True)
class BucketAssignment:
    key: str
    size: tuple[int, int]
    bucket: tuple[int, int]
    scale: float  # > 1: upscaled
    cropped_fraction: float  # share of the resized item cut away by the centre crop

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BucketPreview:
    buckets: dict[tuple[int, int], list[BucketAssignment]] = field(default_factory=dict)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    def counts(self) -> dict[tuple[int, int], int]:
        return {bucket: len(items) for bucket, items in sorted(self.buckets.items())}

    def to_dict(self) -> dict:
        return {"buckets": {f"{w}x{h}": [a.to_dict() for a in items] for (w, h), items in sorted(self.buckets.items())},
                "dropped": [{"key": key, "reason": reason} for key, reason in self.dropped]}


def _as_key_and_size(item) -> tuple[str, tuple[int, int] | None]:
    if isinstance(item, tuple):
        key, size = item
        return str(key), (tuple(size) if size else None)
    size = (item.width, item.height) if item.width and item.height else None
    return str(item.key), size


def assign_buckets(items: Iterable, resolution: tuple[int, int], enable_bucket: bool = True,
                   no_upscale: bool = False, step: int = RESOLUTION_STEP) -> BucketPreview:
    """Bucket every item: `items` are (key, (w, h) or None) tuples or objects with `key`, `width`, `height`."""
    preview = BucketPreview()
    for item in items:
        key, size = _as_key_and_size(item)
        if size is None:
            preview.dropped.append((key, "its size could not be read (unreadable file)"))
            continue
        bucket = select_bucket(size, resolution, enable_bucket, no_upscale, step)
        if bucket[0] < step or bucket[1] < step:
            preview.dropped.append((key, f"{size[0]}x{size[1]} is smaller than {step} px on one side, and "
                                         "bucket_no_upscale keeps it from being enlarged"))
            continue
        covered = cover_size(size, bucket)
        scale = max(bucket[0] / size[0], bucket[1] / size[1])
        cropped = 1.0 - (bucket[0] * bucket[1]) / (covered[0] * covered[1])
        preview.buckets.setdefault(bucket, []).append(BucketAssignment(key, size, bucket, scale, max(cropped, 0.0)))
    return preview

"""Caching runs: VAE latents (and optional I2V conditioning) per frame window, UMT5 outputs per caption.

Files that are already current are skipped (`skip_existing`), every file is written atomically, and a stop request
or a kill leaves only whole files behind, so running the same command again continues where it stopped. A
dataset's `cache_manifest.json` is removed when its latents run starts and written when it completes; training
refuses a cache without one.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.data import encoders
from backend.data.cache_files import (ManifestEntry, is_current, remove_manifest, save_latent_file, save_text_file,
                                      write_manifest)
from backend.data.cache_plan import LatentTask, TextTask, latent_settings, list_dataset, plan_latents, plan_text
from backend.data.dataset_config import DatasetConfig, ResolvedDataset
from backend.data.media import MediaError, decode_frames, load_image
from backend.data.preprocess import resize_to_bucket, to_pixels
from backend.errors import UserError


@dataclass
class CacheSummary:
    kind: str
    total: int = 0
    written: int = 0
    skipped: int = 0  # already current
    failed: list[tuple[Path, str]] = field(default_factory=list)  # items left out, with the reason
    stopped: bool = False

    def line(self) -> str:
        state = "stopped" if self.stopped else "done"
        return (f"cache {self.kind} {state}: {self.written} written, {self.skipped} already current, "
                f"{len(self.failed)} item(s) left out, {self.total} in all")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "total": self.total, "written": self.written, "skipped": self.skipped,
                "failed": [{"path": str(p), "reason": r} for p, r in self.failed], "stopped": self.stopped}


class _Progress:
    """Progress, warnings and the stop flag through the job protocol (no-ops outside a job)."""

    def __init__(self, ctx, summary: CacheSummary, log) -> None:
        self.ctx, self.summary, self.log, self.done = ctx, summary, log, 0
        self.logged_percent = -1

    def begin(self) -> None:
        """The count starts at 0 of the planned total, before the first (slow) item."""
        self.log(f"cache {self.summary.kind}: {self.summary.total} item(s) to cache or check")
        self.ctx.emit("progress", step=0, total=self.summary.total)

    def advance(self, count: int = 1) -> None:
        if count <= 0:
            return
        self.done += count
        self.ctx.emit("progress", step=self.done, total=self.summary.total)
        percent = 100 * self.done // max(1, self.summary.total)
        if percent != self.logged_percent:  # at most one log line per percent
            self.logged_percent = percent
            self.log(f"cache {self.summary.kind}: {self.done}/{self.summary.total} ({percent}%)")

    def warn(self, path: Path, reason: str) -> None:
        self.summary.failed.append((path, reason))
        self.ctx.emit("warning", message=f"{path.name} left out: {reason}")
        self.log(f"warning: {path.name} left out: {reason}")

    def should_stop(self) -> bool:
        self.summary.stopped = self.summary.stopped or self.ctx.stop_requested()
        return self.summary.stopped


def _job_context(ctx):
    if ctx is not None:
        return ctx
    from backend.jobs.protocol import JobContext

    return JobContext.from_env()


# ---- latents ----------------------------------------------------------------------------------------------------

def _item_frames(task: LatentTask, needed: set[int]) -> dict[int, np.ndarray]:
    if task.item.kind == "image":
        return {0: load_image(task.item.path)}
    frames = decode_frames(task.item.path, needed)
    if len(frames) < len(needed):
        raise MediaError(f"only {len(frames)} of the {len(needed)} frames needed could be decoded")
    return frames


def _encode_group(vae, group: list[tuple[LatentTask, torch.Tensor]], i2v: bool, model_id: str) -> None:
    pixels = torch.stack([p for _, p in group])
    latents = encoders.encode_latents(vae, pixels)
    image_latents = encoders.encode_i2v_condition(vae, pixels[:, :, 0], pixels.shape[2]) if i2v else None
    for row, (task, _) in enumerate(group):
        metadata = {"loraid_fingerprint": task.fingerprint, "item_key": task.item.key, "kind": task.item.kind,
                    "source": str(task.item.path), "bucket": f"{task.bucket[0]}x{task.bucket[1]}",
                    "window_start": str(task.window.start), "frame_count": str(task.window.length),
                    "width": str(task.item.width), "height": str(task.item.height), "model": model_id}
        save_latent_file(task.path, latents[row], None if image_latents is None else image_latents[row], metadata)


def _manifest_entry(task: LatentTask) -> ManifestEntry:
    return ManifestEntry(task.item.key, task.item.kind, str(task.item.path), task.bucket, task.window.start,
                         task.window.length, task.path.name)


def _refuse_control(config: DatasetConfig) -> None:
    for dataset in config.resolved():
        dataset.refuse_control(config.source_name)


def cache_latents(config: DatasetConfig, vae, *, model_id: str, batch_size: int = 1, skip_existing: bool = True,
                  i2v: bool = False, ctx=None, log=print) -> CacheSummary:
    """Encode every (item, frame window) of the config with `vae`; the frame sizes are buckets in multiples of
    `encoders.bucket_step(vae)` (16 px for the Wan2.1 VAE, 32 px for the Wan2.2 VAE of TI2V-5B)."""
    ctx = _job_context(ctx)
    summary = CacheSummary("latents")
    progress = _Progress(ctx, summary, log)
    plans: list[tuple[ResolvedDataset, list[LatentTask]]] = []
    left_out: dict[int, set[str]] = {}  # dataset index -> keys of items that could not be cached
    _refuse_control(config)
    if i2v and encoders.is_wan22_vae(vae):
        from backend.data.cache_settings import LatentCacheSettings

        i2v_setting = LatentCacheSettings.named("i2v")
        raise UserError(f"{i2v_setting} caches the Wan2.1-style image conditioning, which TI2V-5B does not use (its "
                        f"image-to-video training keeps the first cached latent frame clean); turn it off.")
    step = encoders.bucket_step(vae)
    for dataset in config.resolved():
        remove_manifest(dataset.cache_directory)
        tasks, skipped = plan_latents(dataset, model_id, i2v, list_dataset(dataset, probe=True), step)
        for path, reason in skipped:
            progress.warn(path, reason)
        left_out[dataset.index] = {path.stem for path, _ in skipped}
        plans.append((dataset, tasks))
    summary.total = sum(len(tasks) for _, tasks in plans)
    progress.begin()
    pending: dict[tuple, list[tuple[LatentTask, torch.Tensor]]] = defaultdict(list)

    def flush(key: tuple) -> None:
        group = pending.pop(key, [])
        if group:
            _encode_group(vae, group, i2v, model_id)
            summary.written += len(group)
            progress.advance(len(group))

    for dataset, tasks in plans:
        by_item: dict[str, list[LatentTask]] = defaultdict(list)
        for task in tasks:
            by_item[task.item.key].append(task)
        for key, item_tasks in by_item.items():
            if progress.should_stop():
                break
            todo = [t for t in item_tasks if not (skip_existing and is_current(t.path, t.fingerprint))]
            summary.skipped += len(item_tasks) - len(todo)
            progress.advance(len(item_tasks) - len(todo))
            if not todo:
                continue
            try:
                frames = _item_frames(todo[0], {i for t in todo for i in t.window.source_indices})
            except MediaError as exc:
                progress.warn(todo[0].item.path, str(exc))
                left_out[dataset.index].add(key)
                progress.advance(len(todo))
                continue
            for task in todo:
                pixels = to_pixels([resize_to_bucket(frames[i], task.bucket) for i in task.window.source_indices])
                group_key = (task.bucket, task.window.length)
                pending[group_key].append((task, pixels))
                if len(pending[group_key]) >= batch_size:
                    flush(group_key)
    if not summary.stopped:
        for group_key in list(pending):
            flush(group_key)
        for dataset, tasks in plans:
            entries = [_manifest_entry(t) for t in tasks if t.item.key not in left_out[dataset.index]]
            write_manifest(dataset.cache_directory, latent_settings(dataset), entries,
                           {"model": model_id, "i2v": i2v, "latent_channels": int(vae.config.z_dim),
                            "bucket_step": step, "left_out": sorted(left_out[dataset.index])})
    log(summary.line())
    return summary


# ---- text ----------------------------------------------------------------------------------------------------------

def _encode_texts(tokenizer, text_encoder, tasks: list[TextTask], model_id: str, max_sequence_length: int) -> None:
    embeds = encoders.encode_prompts(tokenizer, text_encoder, [t.item.caption for t in tasks], max_sequence_length)
    for task, embed in zip(tasks, embeds):
        save_text_file(task.path, embed, {"loraid_fingerprint": task.fingerprint, "item_key": task.item.key,
                                          "caption": task.item.caption, "model": model_id,
                                          "max_sequence_length": str(max_sequence_length)})


def cache_text(config: DatasetConfig, tokenizer, text_encoder, *, model_id: str, batch_size: int = 1,
               skip_existing: bool = True, max_sequence_length: int = encoders.MAX_SEQUENCE_LENGTH, ctx=None,
               log=print) -> CacheSummary:
    ctx = _job_context(ctx)
    summary = CacheSummary("text")
    progress = _Progress(ctx, summary, log)
    tasks = [task for dataset in config.resolved()
             for task in plan_text(dataset, model_id, max_sequence_length, list_dataset(dataset, probe=False))]
    summary.total = len(tasks)
    progress.begin()
    todo = [t for t in tasks if not (skip_existing and is_current(t.path, t.fingerprint))]
    summary.skipped = len(tasks) - len(todo)
    progress.advance(summary.skipped)
    for start in range(0, len(todo), batch_size):
        if progress.should_stop():
            break
        batch = todo[start:start + batch_size]
        _encode_texts(tokenizer, text_encoder, batch, model_id, max_sequence_length)
        summary.written += len(batch)
        progress.advance(len(batch))
    log(summary.line())
    return summary

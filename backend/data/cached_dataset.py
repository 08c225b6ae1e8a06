"""What training reads: the cached latents and text outputs of a dataset config, in bucketed batches.

Built from the dataset TOML and each dataset's `cache_manifest.json`; captions are re-read from the dataset (cheap)
so a caption edited after text caching is caught instead of silently training on the old one. The order is
musubi-tuner's: each epoch, items are shuffled inside their bucket, cut into batches of the dataset's batch_size,
and the batches shuffled. It depends only on (seed, epoch), so a position (epoch, index) resumes exactly.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from backend.data.cache_files import (FINGERPRINT_KEY, MANIFEST_NAME, load_latent_file, load_text_file,
                                      read_manifest, read_metadata, text_file_name)
from backend.data.cache_plan import latent_settings, list_dataset, text_fingerprint
from backend.data.dataset_config import DatasetConfig, ResolvedDataset, load_dataset_config
from backend.data.encoders import pad_text_embeds
from backend.data.musubi_cache import ADOPTED_FROM, adopt, musubi_latent_files, record

MUSUBI_TEXT_LENGTH = 512  # musubi-tuner's Wan text caches: UMT5 outputs of at most 512 tokens
from backend.errors import UserError


@dataclass(frozen=True)
class CachedItem:
    dataset_index: int
    key: str
    caption: str
    bucket: tuple[int, int]
    frames: int
    latent_file: Path
    text_file: Path


@dataclass(frozen=True)
class DataPosition:
    """The next batch to train on: batch `index` of epoch `epoch`."""
    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "DataPosition":
        return cls(int(data.get("epoch", 0)), int(data.get("index", 0))) if data else cls()


def _text_mismatch(key: str, caption: str, meta: dict) -> str:
    """Why a text cache of ours no longer fits its item, in words (caption, text model or length)."""
    if meta.get("caption") is not None and meta["caption"] != caption:
        return f"the caption of {key} changed after text caching"
    if meta.get("caption") is None:
        return f"the text cache of {key} records no caption to check it against"
    return f"the text cache of {key} was made by another version of the cache command"


def command_rerun(what: str, config: DatasetConfig, fresh: bool = False) -> str:
    """How to make the caches again, for the command line."""
    return (f"run `python -m backend cache {what} --dataset_config {config.source_name}"
            f"{' --no_skip_existing' if fresh else ''}`")


def app_rerun(what: str, config: DatasetConfig, fresh: bool = False) -> str:
    """How to make the caches again, in the app's words (its Dataset tab)."""
    keep = ", with Keep current files unticked" if fresh else ""
    return f"cache its {what} again in the Dataset tab (Cache {what}{keep})"


class CachedDataset:
    def __init__(self, config: DatasetConfig, seed: int = 0, rerun=command_rerun) -> None:
        """`rerun(what, config, fresh)`: the advice every cache problem ends with (command_rerun or app_rerun)."""
        self.config, self.seed, self._rerun = config, seed, rerun
        self.datasets = config.resolved()
        self.items: list[CachedItem] = []
        self.warnings: list[str] = []
        self.notes: list[str] = config.notes()  # what loading did (rounded target_frames, adopted caches), one line each
        self.text_model_id: str | None = None
        lengths: set[int] = set()
        for dataset in self.datasets:
            self.items += self._collect(dataset, lengths)
        if not self.items:
            raise UserError(f"{config.source_name}: the caches hold no items; {self._rerun('latents', config)}.")
        if len(lengths) > 1:
            raise UserError(f"text caches were made with different max_sequence_length values {sorted(lengths)}; "
                            f"{self._rerun('text', config, fresh=True)}.")
        self.max_sequence_length = lengths.pop()

    @classmethod
    def from_file(cls, dataset_config: str | Path, seed: int = 0, rerun=command_rerun) -> "CachedDataset":
        return cls(load_dataset_config(dataset_config), seed, rerun)

    # ---- checking the caches -------------------------------------------------------------------------------------
    def _collect(self, dataset: ResolvedDataset, lengths: set[int]) -> list[CachedItem]:
        dataset.refuse_control(self.config.source_name)
        listing = {item.key: item for item in list_dataset(dataset, probe=False).items}
        manifest = read_manifest(dataset.cache_directory)
        if manifest is None:
            manifest = self._adopt_musubi(dataset, listing)
        adopted = manifest.get("adopted") == ADOPTED_FROM
        if not adopted and manifest["settings"] != latent_settings(dataset):
            changed = [k for k, v in latent_settings(dataset).items() if manifest["settings"].get(k) != v]
            raise UserError(f"{dataset.label}: {', '.join(changed)} changed since the latents were cached; "
                            f"{self._rerun('latents', self.config)}.")
        cached_keys = {entry.key for entry in manifest["entries"]} | set(manifest.get("left_out", []))
        uncached = sorted(set(listing) - cached_keys)
        if uncached:
            made = "musubi-tuner's cache was adopted" if adopted else "caching"
            raise UserError(f"{dataset.label}: {len(uncached)} item(s) were added after {made} "
                            f"(first: {uncached[0]}); {self._rerun('latents', self.config)}.")
        items = []
        for entry in manifest["entries"]:
            item = listing.get(entry.key)
            if item is None:
                self.warnings.append(f"{entry.key} is no longer in {dataset.label}; its cache is not used.")
                continue
            latent_file = dataset.cache_directory / entry.latent_file
            text_file = dataset.cache_directory / text_file_name(entry.key)
            if not (self._usable(dataset, latent_file, "latents") and self._usable(dataset, text_file, "text")):
                continue
            text_meta = read_metadata(text_file)
            length = int(text_meta.get("max_sequence_length", str(MUSUBI_TEXT_LENGTH)))
            if FINGERPRINT_KEY not in text_meta:
                self._check_musubi_text(dataset, item, text_file, manifest)
            elif text_meta[FINGERPRINT_KEY] != text_fingerprint(item.caption or "", text_meta.get("model", ""), length):
                raise UserError(f"{dataset.label}: {_text_mismatch(entry.key, item.caption or '', text_meta)}; "
                                f"{self._rerun('text', self.config)}.")
            lengths.add(length)
            items.append(CachedItem(dataset.index, entry.key, item.caption, entry.bucket, entry.frames, latent_file,
                                    text_file))
        return items

    def _adopt_musubi(self, dataset: ResolvedDataset, listing: dict) -> dict:
        """No manifest: adopt musubi-tuner's files when the directory holds them (see musubi_cache), else say why
        there is nothing to train on."""
        directory = dataset.cache_directory
        if not musubi_latent_files(directory):
            ours = sorted(directory.glob("*_wan.safetensors")) if directory.is_dir() else []
            why = (f"its latents run did not complete ({len(ours)} file(s) but no {MANIFEST_NAME})" if ours
                   else "it holds no latent files" if directory.is_dir() else "the folder does not exist")
            raise UserError(f"{dataset.label}: no complete latent cache in {directory} ({why}); "
                            f"{self._rerun('latents', self.config)}.")
        try:
            adoption = adopt(dataset, listing)
        except ValueError as exc:
            raise UserError(f"{dataset.label}: {exc}; re-cache one of them with musubi-tuner or "
                            f"{self._rerun('latents', self.config)}.") from None
        if not adoption.entries:
            first, why = next(iter(adoption.left_out.items()), ("-", "no item matched"))
            raise UserError(f"{dataset.label}: musubi-tuner's cache in {directory} covers no item of the dataset "
                            f"({first}: {why}); {self._rerun('latents', self.config)}.")
        record(dataset, latent_settings(dataset), adoption)
        self.notes.append(adoption.line(dataset.label, len(listing)))
        return read_manifest(directory)

    def _check_musubi_text(self, dataset: ResolvedDataset, item, text_file: Path, manifest: dict) -> None:
        """musubi-tuner's text caches record no caption: a caption edited after them is caught by its file time."""
        stamp = (manifest.get("text_stamps") or {}).get(item.key)
        if stamp is not None and list(stamp) != [text_file.stat().st_size, text_file.stat().st_mtime_ns]:
            raise UserError(f"{dataset.label}: {text_file.name} was rewritten after musubi-tuner's cache was adopted; "
                            f"delete {MANIFEST_NAME} in {dataset.cache_directory} to adopt it again.")
        caption_path = getattr(item, "caption_path", None)
        if caption_path is not None and caption_path.is_file() and \
                caption_path.stat().st_mtime_ns > text_file.stat().st_mtime_ns:
            self.warnings.append(f"{caption_path.name} is newer than its musubi-tuner text cache {text_file.name} "
                                 f"(which records no caption, so the edit cannot be checked); if the caption changed, "
                                 f"{self._rerun('text', self.config)}.")

    def _usable(self, dataset: ResolvedDataset, path: Path, what: str) -> bool:
        """True when the file exists and reads; a missing/broken file is an error naming it."""
        if path.is_file() and read_metadata(path) is not None:
            return True
        problem = "is missing" if not path.exists() else "cannot be read"
        raise UserError(f"{dataset.label}: cache file {path.name} {problem}; {self._rerun(what, self.config)}.")

    # ---- order ---------------------------------------------------------------------------------------------------
    def buckets(self) -> dict[tuple[int, int, int, int], list[CachedItem]]:
        """(dataset index, width, height, frames) -> items, each repeated num_repeats times."""
        repeats = {d.index: d.num_repeats for d in self.datasets}
        out: dict[tuple[int, int, int, int], list[CachedItem]] = {}
        for item in self.items:
            key = (item.dataset_index, *item.bucket, item.frames)
            out.setdefault(key, []).extend([item] * repeats[item.dataset_index])
        return dict(sorted(out.items()))

    def epoch_batches(self, epoch: int) -> list[list[CachedItem]]:
        rng = random.Random(f"loraid-data:{self.seed}:{epoch}")
        batch_sizes = {d.index: d.batch_size for d in self.datasets}
        batches = []
        for key, items in self.buckets().items():
            items = list(items)
            rng.shuffle(items)
            size = batch_sizes[key[0]]
            batches += [items[i:i + size] for i in range(0, len(items), size)]
        rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        """Batches per epoch."""
        sizes = {d.index: d.batch_size for d in self.datasets}
        return sum(-(-len(items) // sizes[key[0]]) for key, items in self.buckets().items())

    def next_position(self, position: DataPosition) -> DataPosition:
        if position.index + 1 < len(self):
            return DataPosition(position.epoch, position.index + 1)
        return DataPosition(position.epoch + 1, 0)

    # ---- loading -------------------------------------------------------------------------------------------------
    def load_batch(self, items: list[CachedItem]) -> dict:
        """{latents [B,C,F,H,W], text_embeds [B,L,D] zero-padded, text_mask [B,L], captions, keys,
        image_latents [B,4+C,F,H,W] when cached with --i2v}."""
        latent_dicts = [load_latent_file(item.latent_file) for item in items]
        embeds, mask = pad_text_embeds([load_text_file(item.text_file) for item in items], self.max_sequence_length)
        batch = {"latents": torch.stack([d["latents"] for d in latent_dicts]), "text_embeds": embeds,
                 "text_mask": mask, "captions": [item.caption for item in items], "keys": [item.key for item in items]}
        if all("image_latents" in d for d in latent_dicts):
            batch["image_latents"] = torch.stack([d["image_latents"] for d in latent_dicts])
        return batch

    def iterate(self, start: DataPosition | dict | None = None) -> Iterator[tuple[DataPosition, dict]]:
        """Endless (position, batch) from `start`; save `next_position(position)` to resume after a batch."""
        position = start if isinstance(start, DataPosition) else DataPosition.from_dict(start)
        epoch, index = position.epoch, position.index
        while True:
            batches = self.epoch_batches(epoch)
            for i in range(index, len(batches)):
                yield DataPosition(epoch, i), self.load_batch(batches[i])
            epoch, index = epoch + 1, 0

    def epoch_view(self, epoch: int, start_index: int = 0) -> "EpochBatches":
        return EpochBatches(self, epoch, start_index)


class EpochBatches(torch.utils.data.Dataset):
    """One epoch's batches from `start_index` as a map-style dataset (use DataLoader(batch_size=None))."""

    def __init__(self, dataset: CachedDataset, epoch: int, start_index: int = 0) -> None:
        self.dataset, self.batches = dataset, dataset.epoch_batches(epoch)[start_index:]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        return self.dataset.load_batch(self.batches[index])

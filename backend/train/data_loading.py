"""The training batches: a `torch.utils.data.DataLoader` over the cached dataset, sharded by accelerate.

One endless stream of batches in the dataset's own order (`CachedDataset.epoch_batches`, epoch after epoch) starts
at the run's data position. accelerate's `prepare` wraps it: process r of N gets batches r, r+N, r+2N, ... of that
stream (its `BatchSamplerShard`), so N processes together walk exactly the order one process walks, and the
position after a step is the start position advanced by gradient_accumulation_steps × N batches, whatever N was
before a resume. Workers load and collate the cache files ahead of use (prefetch), into pinned memory on CUDA so
the copy to the GPU is asynchronous.

Every random draw of a micro-batch (noise, timesteps, dropouts) is seeded from (seed, the batch's position in the
stream), never from a process-local generator: a run on N processes trains the same adapter as one process with
N× the gradient accumulation, and a resume needs no random-generator state to continue exactly.
"""
from __future__ import annotations

import hashlib

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from backend.data.cached_dataset import CachedDataset, DataPosition


class CachedItems(Dataset):
    """Item i of the cached dataset (loading happens in `CachedDataset.load_batch`, the loader's collate)."""

    def __init__(self, dataset: CachedDataset) -> None:
        self.items = dataset.items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class BatchStream(Sampler):
    """Endless lists of item indices: the dataset's batches from `start`, epoch after epoch."""

    def __init__(self, dataset: CachedDataset, start: DataPosition) -> None:
        self.dataset, self.start = dataset, start

    def __iter__(self):
        index_of = {id(item): i for i, item in enumerate(self.dataset.items)}
        epoch, first = self.start.epoch, self.start.index
        while True:
            for batch in self.dataset.epoch_batches(epoch)[first:]:
                yield [index_of[id(item)] for item in batch]
            epoch, first = epoch + 1, 0


def training_loader(dataset: CachedDataset, start: DataPosition, workers: int, pin_memory: bool) -> DataLoader:
    """The DataLoader to hand to `accelerator.prepare` (which shards it over the processes)."""
    extra = {"prefetch_factor": 2, "persistent_workers": True} if workers > 0 else {}
    return DataLoader(CachedItems(dataset), batch_sampler=BatchStream(dataset, start), collate_fn=dataset.load_batch,
                      num_workers=workers, pin_memory=pin_memory, **extra)


def advance(dataset: CachedDataset, position: DataPosition, count: int) -> DataPosition:
    """The position `count` batches further along the stream."""
    per_epoch = len(dataset)
    epochs, index = divmod(position.index + count, per_epoch)
    return DataPosition(position.epoch + epochs, index)


def batch_seed(seed: int, position: DataPosition) -> int:
    """A 63-bit seed for the micro-batch at `position` (the same on every process and after a resume)."""
    digest = hashlib.sha256(f"loraid-batch:{seed}:{position.epoch}:{position.index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_micro_batch(seed: int, position: DataPosition, device: torch.device | str = "cpu") -> torch.Generator:
    """Seed the global RNGs (dropouts) and return the noise / timestep generator of one micro-batch, on `device`
    (noise drawn where it is used: no host-to-device copy, no sync)."""
    value = batch_seed(seed, position)
    torch.manual_seed(value)
    return torch.Generator(device=device).manual_seed(value)

"""The training DataLoader: the dataset's batch order from any position, and accelerate's shards of it."""
from __future__ import annotations

import torch
from accelerate.data_loader import prepare_data_loader

from backend.data.cached_dataset import CachedDataset, DataPosition
from backend.train.data_loading import advance, batch_seed, training_loader


def _dataset(demo_workspace):
    return CachedDataset.from_file(demo_workspace.root / "datasets/demo/concept_a/dataset.toml", seed=7)


def _keys(loader, count):
    stream = iter(loader)
    return [tuple(next(stream)["keys"]) for _ in range(count)]


def test_loader_walks_the_dataset_order_across_epochs_from_any_position(demo_workspace):
    dataset = _dataset(demo_workspace)
    per_epoch = len(dataset)
    start = DataPosition(1, per_epoch - 2)
    expected = []
    for position, batch in dataset.iterate(start):
        expected.append(tuple(batch["keys"]))
        if len(expected) == 5:
            break
    loader = training_loader(dataset, start, workers=2, pin_memory=False)
    batches = list(zip(range(5), iter(loader)))
    assert [tuple(batch["keys"]) for _, batch in batches] == expected
    reference = dataset.load_batch(dataset.epoch_batches(1)[per_epoch - 2])
    assert torch.equal(batches[0][1]["latents"], reference["latents"])  # worker-loaded tensors are the cache's
    assert advance(dataset, start, 5) == DataPosition(2, 3)
    assert advance(dataset, DataPosition(0, 0), 3 * per_epoch) == DataPosition(3, 0)


def test_accelerate_shards_give_each_process_every_nth_batch(demo_workspace):
    dataset = _dataset(demo_workspace)
    start = DataPosition(0, 1)
    whole = _keys(training_loader(dataset, start, workers=0, pin_memory=False), 8)
    assert len(set(whole)) > 2  # distinct batches, so the shards are told apart
    shards = [_keys(prepare_data_loader(training_loader(dataset, start, workers=0, pin_memory=False),
                                        num_processes=2, process_index=rank, put_on_device=False), 4)
              for rank in (0, 1)]
    assert shards[0] == whole[0::2] and shards[1] == whole[1::2]


def test_batch_seeds_depend_on_the_position_only():
    assert batch_seed(3, DataPosition(0, 1)) == batch_seed(3, DataPosition(0, 1))
    seeds = {batch_seed(3, DataPosition(epoch, index)) for epoch in range(4) for index in range(50)}
    assert len(seeds) == 200 and batch_seed(4, DataPosition(0, 1)) not in seeds

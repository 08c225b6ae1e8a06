"""What training reads: batches from the caches, deterministic per seed, resumable at (epoch, index)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from backend.__main__ import main
from backend.data.cache_files import load_latent_file, load_text_file
from backend.data.cached_dataset import CachedDataset, DataPosition
from backend.data.encoders import pad_text_embeds
from backend.errors import UserError


def cache_both(folder: Path, models) -> None:
    for args in (["latents", "--vae", str(models["vae"]), "--batch_size", "3"],
                 ["text", "--text_encoder", str(models["text_encoder"]), "--tokenizer", str(models["tokenizer"])]):
        assert main(["cache", args[0], "--dataset_config", str(folder / "dataset.toml"), *args[1:]]) == 0


@pytest.fixture(scope="module")
def cached_template(tmp_path_factory, make, models) -> Path:
    folder = make.small_dataset(tmp_path_factory.mktemp("cached_dataset"))
    cache_both(folder, models)
    return folder


@pytest.fixture
def cached(cached_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the small dataset with both caches filled (latent/text files keep their times)."""
    return Path(shutil.copytree(cached_template, tmp_path / "data"))


def keys(batches) -> list[list[str]]:
    return [[item.key for item in batch] for batch in batches]


def test_batches_hold_the_cached_tensors(cached: Path):
    dataset = CachedDataset.from_file(cached / "dataset.toml", seed=0)
    assert len(dataset.items) == 7 and len(dataset) == 7 and dataset.max_sequence_length == 512
    assert {k: len(v) for k, v in dataset.buckets().items()} == {
        (1, 48, 48, 1): 2, (1, 64, 32, 1): 1, (2, 48, 48, 1): 2, (2, 48, 48, 5): 2}
    for _, batch in zip(range(7), dataset.iterate()):
        position, batch = batch
        (item,) = [i for i in dataset.epoch_batches(position.epoch)[position.index]]
        assert batch["keys"] == [item.key] and batch["captions"] == [item.caption]
        assert torch.equal(batch["latents"][0], load_latent_file(item.latent_file)["latents"])
        embeds, mask = pad_text_embeds([load_text_file(item.text_file)], 512)
        assert torch.equal(batch["text_embeds"], embeds) and torch.equal(batch["text_mask"], mask)
        assert batch["latents"].shape[2] == (item.frames - 1) // 4 + 1 and "image_latents" not in batch


def test_order_is_deterministic_and_resumes_exactly(cached: Path):
    a = CachedDataset.from_file(cached / "dataset.toml", seed=3)
    b = CachedDataset.from_file(cached / "dataset.toml", seed=3)
    assert keys(a.epoch_batches(0)) == keys(b.epoch_batches(0))
    assert any(keys(a.epoch_batches(e)) != keys(a.epoch_batches(0)) for e in range(1, 4))  # reshuffled per epoch
    other = CachedDataset.from_file(cached / "dataset.toml", seed=4)
    assert any(keys(other.epoch_batches(e)) != keys(a.epoch_batches(e)) for e in range(4))

    straight = [(pos, batch) for _, (pos, batch) in zip(range(16), a.iterate())]
    assert [p.to_dict() for p, _ in straight[5:9]] == [{"epoch": 0, "index": 5}, {"epoch": 0, "index": 6},
                                                        {"epoch": 1, "index": 0}, {"epoch": 1, "index": 1}]
    saved = a.next_position(straight[5][0]).to_dict()  # what a checkpoint stores after training batch 5
    resumed = b.iterate(DataPosition.from_dict(json.loads(json.dumps(saved))))
    for (pos, batch), (pos2, batch2) in zip(straight[6:], resumed):
        assert pos == pos2 and batch["keys"] == batch2["keys"] and torch.equal(batch["latents"], batch2["latents"])


def test_repeats_and_batch_size(cached: Path):
    toml_file = cached / "dataset.toml"
    toml_file.write_text(toml_file.read_text().replace("enable_bucket = true\n",
                                                       "enable_bucket = true\nnum_repeats = 2\nbatch_size = 2\n"))
    dataset = CachedDataset.from_file(toml_file, seed=1)
    batches = dataset.epoch_batches(0)
    # buckets of 4, 2, 4, 4 items (each repeated twice) -> 2 + 1 + 2 + 2 batches of 2
    assert len(batches) == len(dataset) == 7 and all(len(batch) == 2 for batch in batches)
    assert all(len({(i.dataset_index, i.bucket, i.frames) for i in batch}) == 1 for batch in batches)
    assert sorted(k for batch in keys(batches) for k in batch) == sorted(
        ["img_0", "img_1", "img_2", "clip_0", "clip_0", "clip_1", "clip_1"] * 2)
    loader = torch.utils.data.DataLoader(dataset.epoch_view(0, start_index=5), batch_size=None)
    loaded = list(loader)
    assert len(loaded) == 2 and loaded[0]["keys"] == [i.key for i in batches[5]]
    assert loaded[0]["latents"].shape[0] == 2 and loaded[0]["text_embeds"].shape == (2, 512, 16)


def test_stale_or_missing_caches_are_refused(cached: Path, make):
    toml_file = cached / "dataset.toml"
    (cached / "images" / "img_1.txt").write_text("an edited caption")
    with pytest.raises(UserError, match="the caption of img_1 changed after text caching; run `python -m backend "
                                        "cache text"):
        CachedDataset.from_file(toml_file)
    (cached / "images" / "img_1.txt").write_text("a red ball 1")
    CachedDataset.from_file(toml_file)  # restored caption: fine again

    (cached / "cache" / "videos" / "clip_0_wan_te.safetensors").unlink()
    with pytest.raises(UserError, match="cache file clip_0_wan_te.safetensors is missing; run `python -m backend "
                                        "cache text"):
        CachedDataset.from_file(toml_file)

    make.caption(make.png(cached / "images" / "img_5.png", 32, 32), "new")
    with pytest.raises(UserError, match=r"1 item\(s\) were added after caching \(first: img_5\)"):
        CachedDataset.from_file(toml_file)

    (cached / "cache" / "images" / "cache_manifest.json").unlink()
    with pytest.raises(UserError, match="no complete latent cache"):
        CachedDataset.from_file(toml_file)


def test_removed_item_and_corrupt_file(cached: Path):
    toml_file = cached / "dataset.toml"
    for suffix in (".png", ".txt"):
        (cached / "images" / f"img_0{suffix}").unlink()
    dataset = CachedDataset.from_file(toml_file)
    assert "img_0" not in {i.key for i in dataset.items} and any("img_0" in w for w in dataset.warnings)

    latent = next((cached / "cache" / "videos").glob("clip_1_00000-005_*_wan.safetensors"))
    latent.write_bytes(b"not safetensors")
    with pytest.raises(UserError, match=f"{latent.name} cannot be read; run `python -m backend cache latents"):
        CachedDataset.from_file(toml_file)
    toml_file.write_text(toml_file.read_text().replace("enable_bucket = true\n",
                                                       "enable_bucket = true\nskip_corrupted_cache = true\n"))
    with pytest.raises(UserError, match="`skip_corrupted_cache` is not a musubi-tuner key"):
        CachedDataset.from_file(toml_file)


def test_cli_reports_events_and_errors(small_dataset: Path, models, monkeypatch, capsys):
    job = small_dataset / "job"
    job.mkdir()
    monkeypatch.setenv("LORAID_JOB_DIR", str(job))
    assert main(["cache", "latents", "--dataset_config", str(small_dataset / "dataset.toml"),
                 "--vae", str(models["vae"])]) == 0
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "start" and names[-1] == "end" and events[-1]["status"] == "succeeded"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1] == {**progress[-1], "step": 7, "total": 7}
    assert "cache latents done: 7 written" in capsys.readouterr().out

    assert main(["cache", "latents", "--dataset_config", str(small_dataset / "dataset.toml")]) == 2
    assert "error: no VAE given; pass --vae DIR" in capsys.readouterr().err
    assert main(["cache", "text", "--dataset_config", str(small_dataset / "nope.toml"),
                 "--text_encoder", str(models["text_encoder"]), "--tokenizer", str(models["tokenizer"])]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err
    assert main(["cache", "latents", "--dataset_config", str(small_dataset / "dataset.toml"),
                 "--vae", str(models["tokenizer"])]) == 2
    assert "VAE folder" in capsys.readouterr().err

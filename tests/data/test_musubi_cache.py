"""musubi-tuner cache directories: checked on first use (names against shapes and dtypes, one VAE and one text
encoder, which items they cover), recorded, and every refusal names its real cause.

Files are written here from musubi-tuner's documented names (DESIGN.md §9) with small random tensors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from backend.data.cached_dataset import CachedDataset
from backend.errors import UserError

MUSUBI_META = {"architecture": "wan", "format_version": "1.0.1"}


def _latent(cache: Path, name: str, shape=(16, 1, 8, 8), dtype=torch.bfloat16, named_dtype: str | None = None,
            named_shape=None) -> None:
    c, f, h, w = named_shape or shape
    tensor = torch.randn(shape).to(dtype)
    dtype_name = named_dtype or str(dtype).removeprefix("torch.")
    save_file({f"latents_{f}x{h}x{w}_{dtype_name}": tensor}, str(cache / name), MUSUBI_META)


def _text(cache: Path, key: str, width: int = 32, dtype=torch.bfloat16) -> Path:
    path = cache / f"{key}_wan_te.safetensors"
    save_file({f"varlen_t5_{str(dtype).removeprefix('torch.')}": torch.randn(5, width).to(dtype)}, str(path),
              MUSUBI_META)
    return path


def _dataset(tmp_path: Path, make, keys=("a", "b", "c")) -> tuple[Path, Path]:
    images, cache = tmp_path / "images", tmp_path / "cache"
    images.mkdir()
    cache.mkdir()
    for index, key in enumerate(keys):
        make.caption(make.png(images / f"{key}.png", 64, 48, seed=index), f"caption {key}")
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\n\n'
                    f'[[datasets]]\nimage_directory = "{images}"\ncache_directory = "{cache}"\n')
    return toml, cache


def test_adoption_checks_each_file_and_says_what_it_left_out(tmp_path, make):
    toml, cache = _dataset(tmp_path, make, keys=("a", "b", "c", "d"))
    _latent(cache, "a_0064x0048_wan.safetensors")
    _text(cache, "a")
    _latent(cache, "b_0064x0048_wan.safetensors")  # no text cache
    _latent(cache, "c_0064x0048_wan.safetensors", dtype=torch.float32, named_dtype="bfloat16")
    _text(cache, "c")
    _latent(cache, "d_0064x0048_wan.safetensors", named_shape=(16, 1, 6, 8))
    _text(cache, "d")
    _latent(cache, "zz_0064x0048_wan.safetensors")
    dataset = CachedDataset.from_file(toml)
    assert [item.key for item in dataset.items] == ["a"] and dataset.items[0].bucket == (64, 64)
    (line,) = dataset.notes
    assert line.startswith("[[datasets]] #1 (images): adopted musubi-tuner's cache (1 latent file(s) of 1 of 4 item(s)")
    assert "left out 3" in line and "ignored 1 file(s) of items not in the dataset (e.g. zz_0064x0048_wan.safetensors)" in line
    manifest = json.loads((cache / "cache_manifest.json").read_text())
    assert manifest["adopted"] == "musubi-tuner" and manifest["left_out"] == ["b", "c", "d"]
    from backend.data.musubi_cache import adopt
    from backend.data.scan import scan_dataset

    resolved = dataset.datasets[0]
    reasons = adopt(resolved, {item.key: item for item in scan_dataset(resolved, probe=False).items}).left_out
    assert reasons["b"] == "no text cache b_wan_te.safetensors"
    assert reasons["c"].endswith("holds float32 values, not the bfloat16 its name says")
    assert "does not match the size in its name" in reasons["d"]


def test_video_windows_are_read_from_the_names_and_checked_against_the_latent_frames(tmp_path, make):
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    videos.mkdir()
    cache.mkdir()
    make.caption(make.mp4(videos / "clip.mp4", 20, 32, 32), "a clip")
    make.caption(make.mp4(videos / "bad.mp4", 20, 32, 32, seed=1), "another clip")
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\n\n[[datasets]]\n'
                    f'video_directory = "{videos}"\ncache_directory = "{cache}"\ntarget_frames = [1, 17]\n')
    _latent(cache, "clip_00000-017_0032x0032_wan.safetensors", shape=(16, 5, 8, 8))
    _latent(cache, "clip_00002-001_0032x0032_wan.safetensors", shape=(16, 1, 8, 8))
    _text(cache, "clip")
    _latent(cache, "bad_00000-017_0032x0032_wan.safetensors", shape=(16, 4, 8, 8))  # 17 frames give 5 latents
    _text(cache, "bad")
    dataset = CachedDataset.from_file(toml)
    assert sorted((item.key, item.frames, item.bucket) for item in dataset.items) == [
        ("clip", 1, (64, 64)), ("clip", 17, (64, 64))]
    from backend.data.musubi_cache import read_latent

    with pytest.raises(ValueError, match="17 frames do not give the 4 latent frames"):
        read_latent(cache / "bad_00000-017_0032x0032_wan.safetensors")
    batch = dataset.load_batch([item for item in dataset.items if item.frames == 17])
    assert batch["latents"].shape == (1, 16, 5, 8, 8) and batch["text_embeds"].shape == (1, 512, 32)


def test_two_vaes_or_two_text_encoders_are_refused_naming_the_files(tmp_path, make):
    toml, cache = _dataset(tmp_path, make, keys=("a", "b"))
    _latent(cache, "a_0064x0048_wan.safetensors")
    _latent(cache, "b_0064x0048_wan.safetensors", shape=(48, 1, 8, 8))
    _text(cache, "a")
    _text(cache, "b")
    with pytest.raises(UserError, match=r"mix 16 channels \(a_0064x0048_wan.safetensors\) and 48 channels"):
        CachedDataset.from_file(toml)
    _latent(cache, "b_0064x0048_wan.safetensors")
    _text(cache, "b", width=64)
    with pytest.raises(UserError, match=r"text caches mix widths 32 \(a_wan_te.safetensors\) and 64"):
        CachedDataset.from_file(toml)
    assert not (cache / "cache_manifest.json").exists()


def test_messages_name_the_real_cause(tmp_path, make):
    toml, cache = _dataset(tmp_path, make, keys=("a",))
    with pytest.raises(UserError, match=r"no complete latent cache in .* \(it holds no latent files\)"):
        CachedDataset.from_file(toml)
    cache.rmdir()
    with pytest.raises(UserError, match=r"\(the folder does not exist\)"):
        CachedDataset.from_file(toml)
    cache.mkdir()
    _latent(cache, "a_0064x0048_wan.safetensors")
    text = _text(cache, "a")
    assert CachedDataset.from_file(toml).warnings == []
    # A caption edited after musubi cached the text: said as such (musubi's files record no caption).
    caption = tmp_path / "images" / "a.txt"
    caption.write_text("a new caption\n")
    os.utime(caption, ns=(text.stat().st_mtime_ns + 10**9, text.stat().st_mtime_ns + 10**9))
    (warning,) = CachedDataset.from_file(toml).warnings
    assert warning.startswith("a.txt is newer than its musubi-tuner text cache a_wan_te.safetensors")
    assert "changed after text caching" not in warning

"""Previews before caching: buckets with items dropped and why, frame windows per mode, cache file counts."""
from __future__ import annotations

import pytest

from backend.data.dataset_config import load_dataset_config
from backend.data.dataset_folder import scan_tree
from backend.data.dataset_form import DatasetForm
from backend.data.dataset_preview import bucket_summary, cache_counts, describe_indices, windows_by_mode
from backend.errors import UserError


@pytest.fixture
def folder(tmp_path, make):
    make.caption(make.png(tmp_path / "images" / "square.png", 32, 32), "square")
    make.caption(make.png(tmp_path / "images" / "wide.png", 64, 32), "wide")
    make.caption(make.png(tmp_path / "images" / "tiny.png", 8, 8), "tiny")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    make.caption(make.mp4(tmp_path / "videos" / "long.mp4", 13), "long")
    make.caption(make.mp4(tmp_path / "videos" / "short.mp4", 3), "short")
    return tmp_path


def test_buckets_count_items_and_windows_and_say_why_items_are_dropped(folder):
    form = DatasetForm(resolution_width=48, resolution_height=48, target_frames=[5, 9])
    summary = bucket_summary(scan_tree(folder), form)
    rows = {row.label: row for row in summary.rows}
    assert sorted(rows) == ["48x48", "64x32"]
    assert (rows["48x48"].images, rows["48x48"].videos, rows["48x48"].video_windows) == (2, 1, 2)
    assert rows["48x48"].upscaled == 3  # 32x32 twice (image and clip) and 8x8 are enlarged
    assert (rows["64x32"].images, rows["64x32"].mean_cropped) == (1, 0.0)
    assert summary.kept == 4
    reasons = dict(summary.dropped)
    assert reasons["images/broken.jpg"].startswith("not a readable image")
    assert reasons["videos/short.mp4"] == ("its 3 frames are fewer than the shortest target_frames (5); add a "
                                           "shorter length such as 1")


def test_bucket_no_upscale_drops_items_smaller_than_one_step(folder):
    form = DatasetForm(resolution_width=48, resolution_height=48, bucket_no_upscale=True, target_frames=[1])
    reasons = dict(bucket_summary(scan_tree(folder), form).dropped)
    assert "bucket_no_upscale keeps it from being enlarged" in reasons["images/tiny.png"]


def test_bad_settings_are_refused_with_the_key_named(folder):
    with pytest.raises(UserError, match=r"resolution height 50 is not a multiple of 16; use 48 or 64"):  # unchecked
        bucket_summary(scan_tree(folder), DatasetForm.model_construct(resolution_width=48, resolution_height=50))
    with pytest.raises(UserError, match=r"setting `resolution_height` = 50 is invalid"):  # the model refuses it
        DatasetForm.from_mapping({"resolution_width": 48, "resolution_height": 50})
    with pytest.raises(UserError, match=r"frame_extraction 'heads' is not a mode; did you mean \"head\"\?"):
        windows_by_mode(17, DatasetForm(frame_extraction="heads"))


def test_windows_by_mode_follow_musubi_rules():
    form = DatasetForm(target_frames=[5], frame_stride=4, frame_sample=3, max_frames=9)
    starts = {mode: [(w.start, w.length) for w in windows] for mode, windows in windows_by_mode(13, form).items()}
    assert starts == {"head": [(0, 5)], "chunk": [(0, 5), (5, 5)], "slide": [(0, 5), (4, 5), (8, 5)],
                      "uniform": [(0, 5), (4, 5), (8, 5)], "full": [(0, 9)]}
    resampled = windows_by_mode(13, DatasetForm(target_frames=[5], source_fps=32.0))["head"][0]
    assert resampled.source_indices == (0, 2, 4, 6, 8)  # 32 fps played at 16: every other frame


def test_describe_indices_collapses_runs():
    assert describe_indices((0, 1, 2, 3, 8, 10, 12, 13)) == "0-3, 8, 10, 12, 13"
    assert describe_indices(()) == ""


def test_cache_counts_list_latent_and_text_files_per_dataset(small_dataset):
    config = load_dataset_config(small_dataset / "dataset.toml")
    cache = small_dataset / "cache" / "images"
    cache.mkdir(parents=True)
    for name in ("img_0_0048x0048_wan.safetensors", "img_1_0048x0048_wan.safetensors", "img_0_wan_te.safetensors",
                 "cache_manifest.json", "notes.txt"):
        (cache / name).write_bytes(b"")
    counts = cache_counts(config)
    assert [(c.latent_files, c.text_files, c.complete) for c in counts] == [(2, 1, True), (0, 0, False)]
    assert counts[1].folder == str(small_dataset / "cache" / "videos")

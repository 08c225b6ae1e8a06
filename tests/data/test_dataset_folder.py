"""Scanning a dataset folder tree: sources per folder and kind, names, problems, path checks."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.data.dataset_folder import MAX_DEPTH, dataset_folder_choices, resolve_folder, scan_tree
from backend.data.thumbnails import thumbnail
from backend.errors import UserError


def test_nested_folders_become_one_source_per_folder_and_kind(tmp_path, make):
    make.caption(make.png(tmp_path / "concept_a" / "images" / "a_0.png", 64, 32), "a red ball")
    make.png(tmp_path / "concept_a" / "images" / "a_1.png", 32, 32)  # no caption
    make.caption(make.mp4(tmp_path / "concept_a" / "videos" / "clip.mp4", 9), "a ball bouncing")
    make.caption(make.png(tmp_path / "mixed" / "still.png", 32, 48), "a still")
    make.caption(make.mp4(tmp_path / "mixed" / "moving.mp4", 5, fps=8), "moving")
    (tmp_path / "mixed" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "mixed" / "notes.md").write_text("ignored", encoding="utf-8")

    scan = scan_tree(tmp_path)

    assert [source.label(tmp_path) for source in scan.sources] == [
        "concept_a/images (images)", "concept_a/videos (videos)", "mixed (images)", "mixed (videos)"]
    assert [source.shares_folder for source in scan.sources] == [False, False, True, True]
    assert [entry.name for entry in scan.entries] == [
        "concept_a/images/a_0.png", "concept_a/images/a_1.png", "concept_a/videos/clip.mp4", "mixed/still.png",
        "mixed/moving.mp4"]
    assert scan.counts() == {"images": 3, "videos": 2, "folders": 3, "missing_captions": 1, "unreadable": 1,
                             "duplicate_names": 0}
    assert [entry.name for entry in scan.missing_captions] == ["concept_a/images/a_1.png"]
    (name, reason), = scan.unreadable
    assert name == "mixed/broken.png" and reason.startswith("not a readable image")
    assert scan.resolutions("image") == {"64x32": 1, "32x32": 1, "32x48": 1}
    clip = scan.entry("concept_a/videos/clip.mp4").item
    assert (clip.frame_count, clip.fps) == (9, 16.0)
    assert scan.entry("mixed/moving.mp4").item.duration == pytest.approx(5 / 8)


def test_same_stem_twice_in_one_source_is_flagged(tmp_path, make):
    make.caption(make.png(tmp_path / "x.png", 16, 16), "one")
    make.png(tmp_path / "x.jpg", 16, 16)
    scan = scan_tree(tmp_path)
    assert scan.duplicate_names == [("x", ["x.jpg", "x.png"])]


def test_folders_deeper_than_the_limit_and_hidden_folders_are_not_searched(tmp_path, make):
    deep = tmp_path.joinpath(*[f"level{i}" for i in range(MAX_DEPTH + 1)])
    make.png(deep / "far.png", 16, 16)
    make.png(tmp_path / ".hidden" / "secret.png", 16, 16)
    make.png(tmp_path / "level0" / "near.png", 16, 16)
    assert [entry.name for entry in scan_tree(tmp_path).entries] == ["level0/near.png"]


def test_a_folder_without_media_and_a_bad_caption_extension_are_refused(tmp_path, make):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"No images or videos were found in .*empty"):
        scan_tree(tmp_path / "empty")
    make.png(tmp_path / "a.png", 16, 16)
    with pytest.raises(UserError, match="must start with a dot"):
        scan_tree(tmp_path, "txt")


def test_typed_folders_are_resolved_against_the_base_and_checked(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    assert resolve_folder("data", tmp_path) == (tmp_path / "data").resolve()
    assert resolve_folder(f' "{tmp_path / "data"}" ', Path("/elsewhere")) == (tmp_path / "data").resolve()
    with pytest.raises(UserError, match="No dataset folder is given"):
        resolve_folder("  ", tmp_path)
    with pytest.raises(UserError, match=r"missing does not exist; check the path \(relative paths start at"):
        resolve_folder("missing", tmp_path)
    with pytest.raises(UserError, match="is a file, not a folder"):
        resolve_folder("file.txt", tmp_path)


def test_folder_choices_list_datasets_and_their_concepts(tmp_path):
    (tmp_path / "demo" / "concept_a").mkdir(parents=True)
    (tmp_path / "demo" / "concept_a" / "dataset.toml").write_text("", encoding="utf-8")
    (tmp_path / "demo" / "notes").mkdir()
    (tmp_path / "other").mkdir()
    assert dataset_folder_choices(tmp_path) == [str(tmp_path / "demo"), str(tmp_path / "demo" / "concept_a"),
                                                str(tmp_path / "other")]
    assert dataset_folder_choices(tmp_path / "absent") == []


def test_thumbnails_show_the_image_or_the_first_frame_at_the_asked_size(tmp_path, make):
    from PIL import Image

    image = make.png(tmp_path / "wide.png", 64, 32, seed=3)
    small = thumbnail(image, 128)
    assert small.shape == (64, 128, 3)
    original = __import__("numpy").asarray(Image.open(image).convert("RGB"))
    assert (small[::2, ::2] == original).all()  # enlarged 2x with nearest pixels: nothing invented
    clip = make.mp4(tmp_path / "clip.mp4", 5, width=32, height=16)
    assert thumbnail(clip, 64).shape == (32, 64, 3)

"""Scanning a folder / JSONL: what is found, what lacks a caption, what cannot be read and why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.data.scan import scan_folder, scan_jsonl
from backend.errors import UserError


@pytest.fixture
def mixed_folder(tmp_path: Path, make) -> Path:
    make.caption(make.png(tmp_path / "cat.png", 48, 32), "a cat")
    make.png(tmp_path / "dog.jpg", 20, 30)  # no caption
    make.caption(make.mp4(tmp_path / "run.mp4", 9, width=32, height=16, fps=8), "running")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage garbage")
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / "sub").mkdir()
    make.png(tmp_path / "sub" / "deep.png", 16, 16)  # subfolders are not part of the dataset
    return tmp_path


def test_scan_folder_reports_everything(mixed_folder: Path):
    report = scan_folder(mixed_folder)
    by_name = {item.path.name: item for item in report.items}
    assert sorted(by_name) == ["cat.png", "dog.jpg", "run.mp4"]
    assert (by_name["cat.png"].width, by_name["cat.png"].height, by_name["cat.png"].caption) == (48, 32, "a cat")
    video = by_name["run.mp4"]
    assert (video.kind, video.width, video.height, video.frame_count, video.fps) == ("video", 32, 16, 9, 8.0)
    assert video.duration == pytest.approx(9 / 8)
    assert report.missing_captions == [mixed_folder / "dog.jpg"]
    unreadable = {path.name: reason for path, reason in report.unreadable}
    assert sorted(unreadable) == ["broken.mp4", "broken.png"]
    assert "not a readable image" in unreadable["broken.png"]
    assert "not a readable video" in unreadable["broken.mp4"]
    assert report.summary() == {"images": 2, "videos": 1, "missing_captions": 1, "unreadable": 2, "duplicate_keys": 0}
    assert json.loads(json.dumps(report.to_dict()))["summary"]["videos"] == 1  # plain data


def test_scan_by_kind_and_duplicate_stems(mixed_folder: Path, make):
    make.png(mixed_folder / "cat.jpg", 16, 16)
    report = scan_folder(mixed_folder, kind="image")
    assert {item.kind for item in report.items} == {"image"}
    assert sorted(p.name for p in report.duplicate_keys["cat"]) == ["cat.jpg", "cat.png"]


def test_scan_missing_folder_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_scan_jsonl(tmp_path: Path, make):
    make.png(tmp_path / "media" / "a.png", 32, 32)
    frames = tmp_path / "media" / "frames"
    for i in range(5):
        make.png(frames / f"{i:03d}.png", 24, 16, seed=i)
    lines = [{"image_path": "media/a.png", "caption": " a picture "},
             {"image_path": str(tmp_path / "media" / "gone.png"), "caption": "missing"},
             {"image_path": "media/a.png"}]
    (tmp_path / "images.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    report = scan_jsonl(tmp_path / "images.jsonl", kind="image")
    assert [item.caption for item in report.items] == ["a picture", None]
    assert [(p.name, r) for p, r in report.unreadable] == [("gone.png", "file not found")]
    assert report.duplicate_keys == {"a": [tmp_path / "media" / "a.png"] * 2}

    (tmp_path / "videos.jsonl").write_text(json.dumps({"video_path": "media/frames", "caption": "moving"}) + "\n")
    (video,) = scan_jsonl(tmp_path / "videos.jsonl").items
    assert (video.kind, video.frame_count, video.width, video.height) == ("video", 5, 24, 16)


@pytest.mark.parametrize("content,message", [
    ('{"image_path": "a.png"}\n{not json}\n', "line 2 is not valid JSON"),
    ('{"path": "a.png", "caption": "x"}\n', "line 1 has neither image_path nor video_path"),
    ('["a.png"]\n', "line 1 is not a JSON object"),
    ('{"video_path": "a.mp4", "caption": "x"}\n', "line 1 has video_path, but this is a image dataset"),
])
def test_bad_jsonl_lines(tmp_path: Path, content: str, message: str):
    (tmp_path / "m.jsonl").write_text(content)
    with pytest.raises(UserError, match=message):
        scan_jsonl(tmp_path / "m.jsonl", kind="image")

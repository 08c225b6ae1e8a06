"""The dataset TOML means here what it means to musubi-tuner: a table over the examples of musubi-tuner's
`docs/dataset_config.md` (commit 30c658c), the sample configs and frame diagrams copied below as the document
gives them, resolved through the same planning the cache command uses (buckets and frame windows).
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from backend.data.cache_plan import plan_latents
from backend.data.dataset_config import parse_dataset_toml
from backend.data.scan import MediaInfo, ScanReport
from backend.errors import UserError

# The document's "Sample for Video Dataset with Caption Text Files".
VIDEO_SAMPLE = """
[general]
resolution = [960, 544]
caption_extension = ".txt"
batch_size = 1
enable_bucket = true
bucket_no_upscale = false

[[datasets]]
video_directory = "/path/to/video_dir"
cache_directory = "/path/to/cache_directory" # recommended to set cache directory
target_frames = [1, 25, 45]
frame_extraction = "head"
source_fps = 30.0 # optional, source fps for videos in the directory, decimal number

[[datasets]]
video_directory = "/path/to/video_dir2"
cache_directory = "/path/to/cache_directory2" # recommended to set cache directory
frame_extraction = "full"
max_frames = 45
"""

IMAGE_SAMPLE = """
[general]
resolution = [960, 544]
caption_extension = ".txt"
batch_size = 1
enable_bucket = true
bucket_no_upscale = false

[[datasets]]
image_directory = "/path/to/image_dir"
cache_directory = "/path/to/cache_directory"
num_repeats = 1 # optional, default is 1. Number of times to repeat the dataset.
"""

VIDEO_JSONL_SAMPLE = """
[general]
resolution = [960, 544]
batch_size = 1
enable_bucket = true
bucket_no_upscale = false

[[datasets]]
video_jsonl_file = "/path/to/metadata.jsonl"
target_frames = [1, 25, 45]
frame_extraction = "head"
cache_directory = "/path/to/cache_directory_head"
source_fps = 30.0 # optional, source fps for videos in the jsonl file

# same metadata jsonl file can be used for multiple datasets
[[datasets]]
video_jsonl_file = "/path/to/metadata.jsonl"
target_frames = [1]
frame_stride = 10
cache_directory = "/path/to/cache_directory_stride"
"""


def _windows(diagram: str) -> list[tuple[int, int]]:
    """(start, length) of each row of the document's x/o diagrams (x = a frame the window takes)."""
    rows = [row.strip() for row in diagram.strip().splitlines()]
    return [(row.index("x"), row.count("x")) for row in rows]


# "Original Video, 40 frames" and the diagram the document draws for each frame_extraction mode.
FRAME_TABLE = [
    ("head", "target_frames = [1, 13, 25]", """
        xooooooooooooooooooooooooooooooooooooooo
        xxxxxxxxxxxxxooooooooooooooooooooooooooo
        xxxxxxxxxxxxxxxxxxxxxxxxxooooooooooooooo"""),
    ("chunk", "target_frames = [13, 25]", """
        xxxxxxxxxxxxxooooooooooooooooooooooooooo
        oooooooooooooxxxxxxxxxxxxxoooooooooooooo
        ooooooooooooooooooooooooooxxxxxxxxxxxxxo
        xxxxxxxxxxxxxxxxxxxxxxxxxooooooooooooooo"""),
    ("slide", "target_frames = [1, 13, 25]\nframe_stride = 10", """
        xooooooooooooooooooooooooooooooooooooooo
        ooooooooooxooooooooooooooooooooooooooooo
        ooooooooooooooooooooxooooooooooooooooooo
        ooooooooooooooooooooooooooooooxooooooooo
        xxxxxxxxxxxxxooooooooooooooooooooooooooo
        ooooooooooxxxxxxxxxxxxxooooooooooooooooo
        ooooooooooooooooooooxxxxxxxxxxxxxooooooo
        xxxxxxxxxxxxxxxxxxxxxxxxxooooooooooooooo
        ooooooooooxxxxxxxxxxxxxxxxxxxxxxxxxooooo"""),
    ("uniform", "target_frames = [1, 13, 25]\nframe_sample = 4", """
        xooooooooooooooooooooooooooooooooooooooo
        oooooooooooooxoooooooooooooooooooooooooo
        oooooooooooooooooooooooooxoooooooooooooo
        ooooooooooooooooooooooooooooooooooooooox
        xxxxxxxxxxxxxooooooooooooooooooooooooooo
        oooooooooxxxxxxxxxxxxxoooooooooooooooooo
        ooooooooooooooooooxxxxxxxxxxxxxooooooooo
        oooooooooooooooooooooooooooxxxxxxxxxxxxx
        xxxxxxxxxxxxxxxxxxxxxxxxxooooooooooooooo
        oooooxxxxxxxxxxxxxxxxxxxxxxxxxoooooooooo
        ooooooooooxxxxxxxxxxxxxxxxxxxxxxxxxooooo
        oooooooooooooooxxxxxxxxxxxxxxxxxxxxxxxxx"""),
]


def _video_toml(keys: str, resolution="[960, 544]", general_extra: str = "") -> str:
    return (f"[general]\nresolution = {resolution}\ncaption_extension = \".txt\"\n{general_extra}\n"
            f"[[datasets]]\nvideo_directory = \"/path/to/video_dir\"\ncache_directory = \"/path/to/cache\"\n{keys}\n")


def _plan(toml: str, items: list[tuple[str, int, int, int]]) -> list[tuple[str, tuple[int, int], int, int]]:
    """(key, bucket, start, length) of every latent file the cache command would write for these items
    (key, width, height, frames)."""
    (dataset,) = parse_dataset_toml(toml, check_paths=False).resolved()
    kind = dataset.kind
    report = ScanReport(dataset.source, [MediaInfo(key, Path(f"/path/to/{key}.mp4"), kind, "a caption", None, w, h,
                                                   frames if kind == "video" else None) for key, w, h, frames in items])
    tasks, skipped = plan_latents(dataset, "model", False, report)
    assert skipped == []
    return [(task.item.key, task.bucket, task.window.start, task.window.length) for task in tasks]


# Where the document's hand-drawn diagram and musubi-tuner's code disagree, the code decides (it is what trains):
# uniform, 1 frame, 4 samples starts at np.linspace(0, 39, 4) = 0, 13, 26, 39; the diagram draws 25 for the third.
CODE_OVER_DIAGRAM = {("uniform", 2): (26, 1)}


@pytest.mark.parametrize("mode, keys, diagram", FRAME_TABLE, ids=[row[0] for row in FRAME_TABLE])
def test_frame_windows_of_a_40_frame_video_are_the_documents(mode, keys, diagram):
    planned = _plan(_video_toml(f"frame_extraction = \"{mode}\"\n{keys}"), [("clip", 960, 544, 40)])
    expected = [CODE_OVER_DIAGRAM.get((mode, row), window) for row, window in enumerate(_windows(diagram))]
    assert [(start, length) for _, _, start, length in planned] == expected


def test_full_extraction_of_three_videos_trims_to_4n_plus_1_and_max_frames():
    """The document: "full, max_frames = 31", videos of 20, 25, 35 frames, "trimmed to N*4+1" and to max_frames.
    Its diagram draws 31 frames for the third video, which is not 4n+1: musubi-tuner's code rounds min(35, 31)
    down to 29, as the document's own rule says, and so does this app."""
    planned = _plan(_video_toml("frame_extraction = \"full\"\nmax_frames = 31"),
                    [("video1", 960, 544, 20), ("video2", 960, 544, 25), ("video3", 960, 544, 35)])
    assert [(key, start, length) for key, _, start, length in planned] == [
        ("video1", 0, 17), ("video2", 0, 25), ("video3", 0, 29)]


@pytest.mark.parametrize("written, resolved", [([79], (77,)), ([1, 25, 45], (1, 25, 45)), ([2, 26, 25], (1, 25)),
                                               ([16, 17], (13, 17))])
def test_target_frames_are_truncated_to_the_nearest_4n_plus_1(written, resolved):
    """The document: "the number of target_frames must be N*4+1 ... Otherwise, it will be truncated"."""
    config = parse_dataset_toml(_video_toml(f"target_frames = {written}"), check_paths=False)
    assert config.resolved()[0].target_frames == resolved
    notes = config.notes()
    assert (notes == []) == (tuple(sorted(set(written))) == resolved)
    if written == [79]:
        assert notes == ["dataset.toml: [[datasets]] #1: target_frames rounded down to 4n+1 as musubi-tuner does "
                         "(79 -> 77); the clips are [77] frames long."]
        assert _plan(_video_toml("target_frames = [79]"), [("clip", 960, 544, 81)]) == [("clip", (960, 544), 0, 77)]


BUCKET_TABLE = [
    # (kind, general keys, item size) -> bucket; videos are bucketed by aspect ratio whatever the flags say
    ("video", "enable_bucket = true\nbucket_no_upscale = false\n", (96, 64), (880, 592)),
    ("video", "enable_bucket = false\n", (96, 64), (880, 592)),
    ("video", "enable_bucket = true\nbucket_no_upscale = true\n", (96, 64), (880, 592)),
    ("video", "", (960, 544), (960, 544)),
    ("video", "", (1920, 1080), (960, 544)),
    ("image", "enable_bucket = true\nbucket_no_upscale = false\n", (96, 64), (880, 592)),
    ("image", "enable_bucket = false\n", (96, 64), (960, 544)),
    ("image", "enable_bucket = true\nbucket_no_upscale = true\n", (96, 64), (96, 64)),
    ("image", "enable_bucket = true\nbucket_no_upscale = true\n", (100, 70), (96, 64)),
]


@pytest.mark.parametrize("kind, general, size, bucket", BUCKET_TABLE)
def test_buckets_at_960x544(kind, general, size, bucket):
    source = ("video_directory = \"/v\"\ntarget_frames = [1]" if kind == "video" else "image_directory = \"/i\"")
    toml = (f"[general]\nresolution = [960, 544]\n{general}\n[[datasets]]\n{source}\n"
            f"cache_directory = \"/c\"\n")
    assert _plan(toml, [("item", *size, 1)])[0][1] == bucket


def test_the_documents_sample_configs_resolve_as_described():
    videos = parse_dataset_toml(VIDEO_SAMPLE, check_paths=False).resolved()
    assert [(d.kind, d.resolution, d.frame_extraction, d.target_frames, d.max_frames, d.source_fps)
            for d in videos] == [("video", (960, 544), "head", (1, 25, 45), 129, 30.0),
                                 ("video", (960, 544), "full", (1,), 45, None)]
    assert videos[0].cache_directory == Path("/path/to/cache_directory")
    (images,) = parse_dataset_toml(IMAGE_SAMPLE, check_paths=False).resolved()
    assert (images.kind, images.num_repeats, images.bucketing) == ("image", 1, (True, False))
    jsonl = parse_dataset_toml(VIDEO_JSONL_SAMPLE, check_paths=False).resolved()
    assert [(d.is_jsonl, d.frame_stride, d.target_frames) for d in jsonl] == [(True, 1, (1, 25, 45)), (True, 10, (1,))]


@pytest.mark.parametrize("section, message", [
    # "Sample for Image Dataset with Control Images": control images for FLUX.1 Kontext / FLUX.2 / Qwen-Image-Edit
    ('image_directory = "/path/to/image_dir"\ncontrol_directory = "/path/to/control_dir"\n'
     'control_resolution = [1024, 1024]\nno_resize_control = false\n',
     "`control_resolution` is a FLUX.1 Kontext / FLUX.2 / Qwen-Image-Edit setting"),
    # "FramePack" / "FramePack One Frame Training"
    ('video_directory = "/v"\nfp_latent_window_size = 9\n', "`fp_latent_window_size` is a FramePack setting"),
    ('image_directory = "/i"\nfp_1f_clean_indices = [0]\nfp_1f_target_index = 9\nfp_1f_no_post = false\n',
     "`fp_1f_clean_indices` is a FramePack one-frame setting"),
    # Qwen-Image-Layered
    ('image_directory = "/i"\nmultiple_target = true\n', "`multiple_target` is a Qwen-Image-Layered setting"),
])
def test_keys_of_other_architectures_are_refused_naming_the_architecture(section, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_dataset_toml(f"[[datasets]]\n{section}cache_directory = \"/c\"\n", check_paths=False)


def test_control_videos_are_refused_naming_fun_control():
    """"Sample for Video Dataset with Control Images": control videos train Wan Fun-Control models."""
    config = parse_dataset_toml('[[datasets]]\nvideo_directory = "/path/to/video_dir"\n'
                                'control_directory = "/path/to/control_dir"\ncache_directory = "/path/to/cache"\n'
                                'target_frames = [1, 25, 45]\nframe_extraction = "head"\n', check_paths=False)
    with pytest.raises(UserError, match=r"control_directory holds control videos for Wan2.1 Fun-Control "
                                        r"\(musubi-tuner's --task t2v-1.3B-FC / t2v-14B-FC\)"):
        config.resolved()[0].refuse_control(config.source_name)


def test_the_demo_toml_exported_for_musubi_has_absolute_paths(tmp_path):
    from backend.data.dataset_toml_file import export_for_musubi
    from backend.data.sample_dataset import write_sample_dataset

    write_sample_dataset(tmp_path / "demo")
    for toml in (tmp_path / "demo" / "dataset.toml", tmp_path / "demo" / "concept_a" / "dataset.toml"):
        exported, note = export_for_musubi(toml)
        assert exported == toml.with_name("dataset.musubi.toml") and "absolute paths" in note
        data = tomllib.loads(exported.read_text())
        paths = [value for section in data["datasets"] for key, value in section.items()
                 if key.endswith(("_directory", "_file"))]
        assert paths and all(Path(p).is_absolute() for p in paths)
        assert all(Path(section[key]).is_dir() for section in data["datasets"]
                   for key in ("image_directory", "video_directory") if key in section)
        original = parse_dataset_toml(toml.read_text(), base_dir=toml.parent).resolved()
        again = parse_dataset_toml(exported.read_text(), base_dir=Path("/elsewhere")).resolved()
        assert again == original  # the same datasets, whatever folder musubi-tuner runs in
        assert export_for_musubi(exported) == (exported, None)  # already absolute: used as it is

    from backend.train.command import musubi_command
    from backend.train.settings import TrainSettings

    toml = tmp_path / "demo" / "concept_a" / "dataset.toml"
    command = musubi_command(TrainSettings(model_kind="wan2.1-t2v-14b", dataset_config=str(toml)), None)
    assert command.argv[command.argv.index("--dataset_config") + 1] == str(toml.with_name("dataset.musubi.toml"))
    assert any("dataset.musubi.toml beside it, the same datasets with absolute paths" in n for n in command.notes)

"""Dataset TOML: every bad input gives its own sentence naming file, section and key; good files round-trip."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.data.dataset_config import (load_dataset_config, parse_dataset_toml, render_dataset_toml)
from backend.errors import UserError

GENERAL = "[general]\nresolution = [64, 64]\n"
IMAGES = "[[datasets]]\nimage_directory = \"imgs\"\ncache_directory = \"c1\"\n"
VIDEOS = "[[datasets]]\nvideo_directory = \"vids\"\ncache_directory = \"c2\"\n"

BAD_INPUTS = [
    ("unknown general key", "[general]\nresolutoin = [64, 64]\n" + IMAGES,
     "dataset.toml: [general]: unknown key `resolutoin`; did you mean `resolution`?"),
    ("unknown dataset key", GENERAL + "[[datasets]]\nimage_dir = \"imgs\"\n",
     "dataset.toml: [[datasets]] #1: unknown key `image_dir`; did you mean `image_directory`?"),
    ("skip_corrupted_cache", GENERAL + "skip_corrupted_cache = true\n" + IMAGES,
     "dataset.toml: [general]: `skip_corrupted_cache` is not a musubi-tuner key: no musubi-tuner version has it"),
    ("control_resolution on videos", GENERAL + VIDEOS + "control_resolution = [512, 512]\n",
     "`control_resolution` is a FLUX.1 Kontext / FLUX.2 / Qwen-Image-Edit setting (control images; Wan Fun-Control"),
    ("target_frames 0", GENERAL + VIDEOS + "target_frames = [0]\n",
     "target_frames value 0 is not a frame count; use 1 or more."),
    ("frame_extraction typo", GENERAL + VIDEOS + "frame_extraction = \"slid\"\n",
     "frame_extraction 'slid' is not a mode; did you mean \"slide\"?"),
    ("resolution not multiple of 16", "[general]\nresolution = [500, 304]\n" + IMAGES,
     "[general]: resolution width 500 is not a multiple of 16; use 496 or 512."),
    ("resolution three numbers", "[general]\nresolution = [64, 64, 3]\n" + IMAGES,
     "resolution must be [width, height]"),
    ("batch_size zero", GENERAL + IMAGES + "batch_size = 0\n",
     "[[datasets]] #1: batch_size must be at least 1, got 0."),
    ("batch_size text", GENERAL + IMAGES + "batch_size = \"two\"\n", "batch_size must be a whole number, got 'two'"),
    ("enable_bucket quoted", "[general]\nenable_bucket = \"yes\"\n" + IMAGES,
     "[general]: enable_bucket must be true or false (no quotes), got 'yes'."),
    ("caption_extension without dot", "[general]\ncaption_extension = \"txt\"\n" + IMAGES,
     "caption_extension must start with a dot, got 'txt'"),
    ("no source", GENERAL + "[[datasets]]\ncache_directory = \"c\"\n",
     "[[datasets]] #1: no media source; set one of image_directory"),
    ("two sources", GENERAL + IMAGES + "video_directory = \"vids\"\n",
     "image_directory and video_directory are both set; use one source per [[datasets]] entry"),
    ("video key on image dataset", GENERAL + IMAGES + "target_frames = [1]\n",
     "target_frames only applies to video datasets, but this entry is an image dataset (image_directory)"),
    ("jsonl without cache", GENERAL + "[[datasets]]\nimage_jsonl_file = \"m.jsonl\"\n",
     "a JSONL dataset needs a cache_directory"),
    ("shared cache directory", GENERAL + IMAGES + "[[datasets]]\nvideo_directory = \"v\"\ncache_directory = \"c1\"\n",
     "[[datasets]] #2: cache_directory"),
    ("cache_directory in general", "[general]\ncache_directory = \"c\"\n" + IMAGES,
     "[general]: cache_directory cannot go in [general]"),
    ("no datasets", GENERAL, "dataset.toml: top level: no [[datasets]] entry"),
    ("single brackets", GENERAL + "[datasets]\nimage_directory = \"imgs\"\n",
     "datasets must be written [[datasets]] (double brackets)"),
    ("unknown section", "[genral]\nresolution = [64, 64]\n" + IMAGES,
     "unknown section `genral`; did you mean `general`?"),
    ("framepack key", GENERAL + VIDEOS + "fp_latent_window_size = 9\n",
     "`fp_latent_window_size` is a FramePack setting that Wan training does not use; remove it."),
    ("negative source_fps", GENERAL + VIDEOS + "source_fps = -30.0\n", "source_fps must be a positive number"),
    ("full with target_frames", GENERAL + VIDEOS + "frame_extraction = \"full\"\ntarget_frames = [17]\n",
     "frame_extraction \"full\" ignores target_frames"),
    ("frame_stride zero", GENERAL + VIDEOS + "frame_stride = 0\n", "frame_stride must be at least 1, got 0."),
]


@pytest.mark.parametrize("name,text,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gives_its_own_message(name, text, message):
    with pytest.raises(UserError) as caught:
        parse_dataset_toml(text, check_paths=False)
    assert message in str(caught.value)
    assert str(caught.value).startswith("dataset.toml: ")


def test_bad_messages_are_distinct():
    messages = set()
    for _, text, _ in BAD_INPUTS:
        with pytest.raises(UserError) as caught:
            parse_dataset_toml(text, check_paths=False)
        messages.add(str(caught.value))
    assert len(messages) == len(BAD_INPUTS)


def test_file_errors_name_the_file(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[general\nresolution = 1\n")
    with pytest.raises(UserError, match="broken.toml is not valid TOML"):
        load_dataset_config(broken)
    no_folder = tmp_path / "d.toml"
    no_folder.write_text(IMAGES)
    with pytest.raises(UserError, match=r"d.toml: \[\[datasets\]\] #1: image folder .*imgs does not exist"):
        load_dataset_config(no_folder)


def test_inheritance_defaults_and_relative_paths(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "vids").mkdir()
    toml_file = tmp_path / "d.toml"
    toml_file.write_text("[general]\nresolution = [64, 48]\nbatch_size = 2\nenable_bucket = true\n" + IMAGES
                         + "batch_size = 3\n" + VIDEOS + "frame_extraction = \"uniform\"\nsource_fps = 30\n")
    images, videos = load_dataset_config(toml_file).resolved()
    assert (images.kind, images.batch_size, images.resolution, images.enable_bucket) == ("image", 3, (64, 48), True)
    assert images.source == tmp_path / "imgs" and images.cache_directory == tmp_path / "c1"
    assert images.caption_extension == ".txt" and images.num_repeats == 1 and not images.bucket_no_upscale
    assert (videos.kind, videos.batch_size, videos.target_frames, videos.source_fps) == ("video", 2, (1,), 30.0)
    assert videos.frame_extraction == "head"  # uniform with frame_sample 1 is the head window, as in musubi-tuner
    assert videos.max_frames == 129 and videos.frame_stride == 1


def test_cache_directory_defaults_to_media_folder():
    (item,) = parse_dataset_toml("[[datasets]]\nimage_directory = \"/data/imgs\"\n", check_paths=False).resolved()
    assert item.cache_directory == Path("/data/imgs") and item.resolution == (960, 544)


def test_render_round_trips_every_key():
    text = ("[general]\nresolution = [960, 544]\ncaption_extension = \".caption\"\nbatch_size = 2\nnum_repeats = 3\n"
            "enable_bucket = true\nbucket_no_upscale = true\n\n"
            "[[datasets]]\nimage_jsonl_file = \"C:\\\\data\\\\meta.jsonl\"\ncache_directory = \"cache/é \\\"q\\\"\"\n"
            "resolution = 512\n\n"
            "[[datasets]]\nvideo_directory = \"v\"\ncache_directory = \"cv\"\ncontrol_directory = \"ctrl\"\n"
            "target_frames = [1, 25, 45]\nframe_extraction = \"slide\"\nframe_stride = 10\nframe_sample = 4\n"
            "max_frames = 81\nsource_fps = 30\nbatch_size = 1\n")
    config = parse_dataset_toml(text, check_paths=False)
    rendered = render_dataset_toml(config, header="made by a test")
    again = parse_dataset_toml(rendered, check_paths=False)
    assert again.general == config.general and again.datasets == config.datasets
    assert render_dataset_toml(again, header="made by a test") == rendered
    assert rendered.startswith("# made by a test\n[general]\n")
    assert "source_fps = 30.0" in rendered  # musubi-tuner wants a decimal number
    assert config.datasets[0].image_jsonl_file == "C:\\data\\meta.jsonl"
    assert config.datasets[0].resolution == (512, 512)
    assert config.resolved()[0].batch_size == 2  # inherited


def test_rendered_file_is_plain_musubi_toml():
    import tomllib

    config = parse_dataset_toml(GENERAL + IMAGES + VIDEOS + "target_frames = [1, 17]\n", check_paths=False)
    data = tomllib.loads(render_dataset_toml(config))
    assert data == {"general": {"resolution": [64, 64]},
                    "datasets": [{"image_directory": "imgs", "cache_directory": "c1"},
                                 {"video_directory": "vids", "cache_directory": "c2", "target_frames": [1, 17]}]}

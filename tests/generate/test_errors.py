"""Bad input is refused with one sentence before anything is generated."""
from __future__ import annotations

import pytest


def _one_sentence(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), stderr
    return lines[0]


@pytest.mark.parametrize("extra, expected", [
    (["--frames", "6"], "Frames (frames) = 6 is not 4n+1 (1, 5, 9, ..., 81); use 5 or 9"),
    (["--width", "30"], "Width (width) = 30 is not a positive multiple of 16; use 32"),
    (["--lora", "missing.safetensors"], "missing.safetensors does not exist"),
    (["--loraid", "1", "3"], "both change block 1"),
    (["--loraid", "9"], "LORAID 9 is not in the workspace registry"),
    (["--multiplier", "1", "2"], "2 multipliers were given for 0 LoRAs"),
    (["--cpu_offload"], "no CUDA GPU"),
    (["--image", "nowhere.png"], "nowhere.png does not exist"),
])
def test_bad_input_is_one_sentence(demo_ws, lora_files, cli, base_args, tmp_path, extra, expected):
    code, stdout, stderr = cli(*base_args(demo_ws), "--model", "demo-t2v", "--prompt", "a red ball",
                               "--out_dir", tmp_path, *extra)
    assert code == 2
    assert expected in _one_sentence(stderr)
    assert not any(tmp_path.iterdir())


def test_overlapping_loraids_run_with_allow_overlap(demo_ws, lora_files, cli, base_args, tmp_path):
    code, stdout, stderr = cli(*base_args(demo_ws), "--model", "demo-t2v", "--prompt", "a red ball", "--frames", 1,
                               "--out_dir", tmp_path, "--loraid", 1, 3, "--allow_overlap")
    assert code == 0, stderr
    assert "overlapping LoRAs allowed" in stdout and len(list(tmp_path.glob("*.png"))) == 1


def test_image_needs_an_i2v_model(demo_ws, cli, base_args, tmp_path):
    from PIL import Image

    image = tmp_path / "start.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    code, _, stderr = cli(*base_args(demo_ws), "--model", "demo-t2v", "--prompt", "a", "--image", image,
                          "--out_dir", tmp_path / "out")
    assert code == 2 and "cannot start from an image; pick an image-to-video model or remove the Start image." in \
        _one_sentence(stderr)

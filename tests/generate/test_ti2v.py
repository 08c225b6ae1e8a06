"""Wan2.2 TI2V-5B generation on the 5B-shaped demo model: text-to-video and image-to-video from one transformer,
through diffusers' pipelines with `expand_timesteps` and the demo Wan2.2 VAE (48 channels, 16x spatial)."""
from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from backend.errors import UserError
from backend.generate.engine import GenerateSession
from backend.generate.model_options import read_model
from backend.generate.pipeline import ModelChoice
from backend.generate.request import GenerateRequest

SIZE, FRAMES = 64, 9  # latents 48 x 3 x 4 x 4


def _video(path) -> list:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _args(ws, out: Path) -> list:
    return ["--workspace", ws.root, "--model", "demo-ti2v", "--width", SIZE, "--height", SIZE, "--frames", FRAMES,
            "--steps", 2, "--guidance_scale", 1.0, "--out_dir", out, "--save_latents"]


@pytest.fixture
def start_image(tmp_path) -> Path:
    path = tmp_path / "start.png"
    Image.new("RGB", (80, 48), (200, 40, 30)).save(path)  # another aspect: the pipeline resizes it to 64x64
    return path


def test_text_to_video_writes_the_asked_frames_and_size(demo_ws, cli, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = cli(*_args(demo_ws, out), "--prompt", "loraidA, a red ball bouncing", "--seed", 4)
    assert code == 0, stderr
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["model"]["task"] == "ti2v" and record["model"]["model"] == "demo-ti2v"
    frames = _video(record["outputs"]["video"])
    assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
    assert load_file(record["outputs"]["latents"])["latents"].shape == (1, 48, 3, SIZE // 16, SIZE // 16)


def test_image_to_video_starts_from_the_image_latent(demo_ws, cli, tiny, start_image, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = cli(*_args(demo_ws, out), "--prompt", "a red ball", "--image", start_image, "--seed", 4)
    assert code == 0, stderr
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["settings"]["image"] == str(start_image)
    frames = _video(record["outputs"]["video"])
    assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)

    # The final latents' first frame is the start image's latent (normalised with the VAE's 48 statistics).
    latents = load_file(record["outputs"]["latents"])["latents"]
    session = GenerateSession(ModelChoice(workspace=demo_ws.root, model="demo-ti2v"), image_to_video=True)
    vae = session.pipeline.vae
    pixels = session.pipeline.video_processor.preprocess(Image.open(start_image).convert("RGB"), SIZE, SIZE)
    with torch.no_grad():
        z = vae.encode(pixels.unsqueeze(2)).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, 48, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 48, 1, 1, 1)
    assert torch.allclose(latents[:, :, :1], (z - mean) / std, atol=1e-5)

    text_only = session.denoise(tiny(width=SIZE, height=SIZE, frames=FRAMES, seed=4, prompt="a red ball"))
    assert not torch.allclose(text_only[:, :, :1], latents[:, :, :1], atol=1e-3)  # T2V does not start from it


def test_sizes_must_fit_the_16x_vae_and_its_vae_must_be_the_wan22_one(demo_ws, cli, tiny, start_image, tmp_path):
    code, _, stderr = cli(*_args(demo_ws, tmp_path), "--prompt", "a", "--width", 48)
    assert code == 2 and "Width (width) = 48 is not a multiple of 32" in stderr and stderr.count("\n") == 1
    request = GenerateRequest(read_model(demo_ws, "demo-ti2v"), tiny(width=SIZE, height=80, image=str(start_image)))
    with pytest.raises(UserError, match=r"Height \(height\) = 80 is not a multiple of 32, .*; use 64"):
        request.check()
    assert GenerateRequest(read_model(demo_ws, "demo-ti2v"), tiny(width=SIZE, height=SIZE,
                                                                   image=str(start_image))).check() == []
    code, _, stderr = cli(*_args(demo_ws, tmp_path), "--prompt", "a", "--vae", demo_ws.vae)
    assert code == 2 and "makes 16-channel latents, but tiny demo TI2V (Wan2.2 5B-shaped) denoises 48" in stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_a_ti2v_file_without_its_kind_finds_the_wan22_vae_and_its_latents_decode(demo_ws, cli, tmp_path):
    """A checkpoint given by path is known as TI2V by its 48 channels: the workspace's Wan2.2 VAE is taken, and
    latents saved from it decode with that VAE."""
    out = tmp_path / "out"
    dit = demo_ws.demo_ti2v / "transformer.safetensors"
    code, _, stderr = cli("--workspace", demo_ws.root, "--dit", dit, "--width", SIZE, "--height", SIZE, "--frames", 5,
                          "--steps", 2, "--guidance_scale", 1.0, "--out_dir", out, "--save_latents", "--prompt", "a",
                          "--seed", 1)
    assert code == 0, stderr
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["model"]["task"] == "ti2v"
    frames = _video(record["outputs"]["video"])
    decoded = tmp_path / "decoded"
    code, _, stderr = cli("--workspace", demo_ws.root, "--decode_latents", record["outputs"]["latents"],
                          "--out_dir", decoded)
    assert code == 0, stderr
    again = _video(json.loads(next(decoded.glob("*.json")).read_text())["outputs"]["video"])
    assert len(again) == len(frames) == 5 and all((a == b).all() for a, b in zip(again, frames))

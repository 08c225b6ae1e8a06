"""Image-to-video on a tiny Wan2.2-I2V-style transformer (36 input channels, no CLIP), and the memory options."""
from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import torch

from backend.generate.engine import GenerateSession, LoraRequest
from backend.generate.memory import FP8_STORAGE, MemoryOptions
from backend.generate.pipeline import ModelChoice


@pytest.fixture(scope="module")
def i2v_dit(tmp_path_factory) -> Path:
    from diffusers import WanTransformer3DModel

    from backend.models.loading import save_transformer_original
    from backend.models.registry import get_model_kind

    config = {key: value for key, value in get_model_kind("demo-t2v").config().items() if not key.startswith("_")}
    config.update(in_channels=36, out_channels=16)
    folder = tmp_path_factory.mktemp("i2v")
    torch.manual_seed(5)
    save_transformer_original(WanTransformer3DModel.from_config(config).eval(), folder / "i2v.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", **config}))
    return folder / "i2v.safetensors"


def test_image_to_video_from_a_start_image(demo_ws, i2v_dit, cli, base_args, tmp_path):
    from PIL import Image

    image = tmp_path / "start.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(image)
    out = tmp_path / "out"
    code, _, stderr = cli(*base_args(demo_ws), "--dit", i2v_dit, "--image", image, "--prompt", "a red ball",
                          "--out_dir", out, "--seed", 2)
    assert code == 0, stderr
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["model"]["task"] == "i2v" and record["settings"]["image"] == str(image)
    with av.open(record["outputs"]["video"]) as container:
        assert sum(1 for _ in container.decode(video=0)) == 5

    code, _, stderr = cli(*base_args(demo_ws), "--dit", i2v_dit, "--prompt", "a", "--out_dir", out)
    assert code == 2 and "is an image-to-video model; give a Start image." in stderr


def test_fp8_storage_keeps_hooked_adapters_in_full_precision(demo_ws, lora_files, tiny):
    choice = ModelChoice(workspace=demo_ws.root, model="demo-t2v")
    full = GenerateSession(choice, LoraRequest([str(lora_files.full)], hooked=True))
    fp8 = GenerateSession(choice, LoraRequest([str(lora_files.full)], hooked=True), MemoryOptions(fp8=True))
    transformer = fp8.model.transformers["main"]
    assert transformer.blocks[0].attn1.to_q.weight.dtype == FP8_STORAGE
    assert all(p.dtype == torch.float32 for network in fp8.networks for p in network.parameters())
    reference, stored = full.denoise(tiny()), fp8.denoise(tiny())
    assert torch.isfinite(stored).all() and not torch.equal(stored, reference)
    assert (stored - reference).abs().max() < 0.25 * reference.abs().max()  # fp8 rounding, not a different model


def test_vae_tiling_decodes_the_same_frames_shape(demo_ws, tiny):
    session = GenerateSession(ModelChoice(workspace=demo_ws.root, model="demo-t2v"), memory=MemoryOptions(vae_tiling=True))
    assert session.pipeline.vae.use_tiling
    assert session.decode(session.denoise(tiny())).shape == (5, 32, 32, 3)

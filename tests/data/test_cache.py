"""Caching: cached tensors equal the VAE / the Wan pipelines on the same input; skip, resume and staleness."""
from __future__ import annotations

import html
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from backend.data import cache as cache_module
from backend.data.cache import cache_latents, cache_text
from backend.data.cache_files import load_latent_file, load_text_file, read_manifest, text_file_name
from backend.data.cached_dataset import CachedDataset
from backend.data.dataset_config import load_dataset_config
from backend.data.encoders import encode_i2v_condition, model_fingerprint, pad_text_embeds
from backend.data.preprocess import resize_to_bucket, to_pixels
from backend.errors import UserError


class Recorder:
    """A JobContext stand-in: records events; asks to stop once `stop_after` progress events were seen."""

    def __init__(self, stop_after: int | None = None):
        self.events: list[tuple[str, dict]] = []
        self.stop_after = stop_after

    def emit(self, event: str, **fields) -> None:
        self.events.append((event, fields))

    def stop_requested(self) -> bool:
        progress = [f for e, f in self.events if e == "progress"]
        return self.stop_after is not None and len(progress) >= self.stop_after


def run_latents(folder: Path, vae, models, **kwargs):
    config = load_dataset_config(folder / "dataset.toml")
    ctx = kwargs.pop("ctx", Recorder())
    return cache_latents(config, vae, model_id=model_fingerprint(models["vae"]), ctx=ctx, log=lambda _: None,
                         **kwargs)


def run_text(folder: Path, text_models, models, **kwargs):
    tokenizer, encoder = text_models
    config = load_dataset_config(folder / "dataset.toml")
    return cache_text(config, tokenizer, encoder, model_id=model_fingerprint(models["text_encoder"]),
                      ctx=Recorder(), log=lambda _: None, **kwargs)


def expected_latents(vae, frames: list[np.ndarray], bucket) -> torch.Tensor:
    """Independent of the cache code: the VAE's mode on the bucketed pixels, normalised as WanPipeline inverts."""
    pixels = to_pixels([resize_to_bucket(f, bucket) for f in frames])[None]
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return ((z - mean) / std)[0]


def all_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_resize_covers_then_crops_the_middle():
    image = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    assert np.array_equal(resize_to_bucket(image, (32, 32)), image[:, 16:48])  # no scaling needed, crop 16 each side
    up = resize_to_bucket(image, (96, 96))  # scale 3: 192x96, crop 48 each side
    reference = np.asarray(Image.fromarray(image).resize((192, 96), Image.LANCZOS))[:, 48:144]
    assert np.array_equal(up, reference)
    pixels = to_pixels([image])
    assert pixels.shape == (3, 1, 32, 64) and torch.allclose(pixels[:, 0].permute(1, 2, 0),
                                                             torch.from_numpy(image / 127.5 - 1).float(), atol=1e-6)


def test_latents_equal_a_direct_vae_call(small_dataset: Path, vae, models):
    summary = run_latents(small_dataset, vae, models, batch_size=2)
    assert (summary.total, summary.written, summary.skipped, summary.failed) == (7, 7, 0, [])
    images = read_manifest(small_dataset / "cache" / "images")
    assert {e.key: e.bucket for e in images["entries"]} == {"img_0": (48, 48), "img_1": (48, 48), "img_2": (64, 32)}
    for entry in images["entries"]:
        cached = load_latent_file(small_dataset / "cache" / "images" / entry.latent_file)["latents"]
        frame = np.asarray(Image.open(small_dataset / "images" / f"{entry.key}.png").convert("RGB"))
        expected = expected_latents(vae, [frame], entry.bucket)
        assert cached.shape == (4, 1, entry.bucket[1] // 8, entry.bucket[0] // 8)
        assert torch.allclose(cached, expected, atol=1e-5), entry.key
    videos = read_manifest(small_dataset / "cache" / "videos")
    assert sorted((e.key, e.start, e.frames) for e in videos["entries"]) == [
        ("clip_0", 0, 1), ("clip_0", 0, 5), ("clip_1", 0, 1), ("clip_1", 0, 5)]
    for entry in videos["entries"]:
        cached = load_latent_file(small_dataset / "cache" / "videos" / entry.latent_file)["latents"]
        frames = all_frames(small_dataset / "videos" / f"{entry.key}.mp4")[entry.start:entry.start + entry.frames]
        assert cached.shape == (4, (entry.frames - 1) // 4 + 1, 6, 6)
        assert torch.allclose(cached, expected_latents(vae, frames, (48, 48)), atol=1e-5), entry.latent_file


def test_text_cache_equals_wan_pipeline_encode_prompt(small_dataset: Path, text_models, models, vae):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    (small_dataset / "images" / "img_0.txt").write_text("  a red &amp; ball\n\n on a   table ")
    summary = run_text(small_dataset, text_models, models, batch_size=3)
    assert (summary.total, summary.written) == (5, 5)
    tokenizer, encoder = text_models
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    for folder, key in [("images", "img_0"), ("images", "img_2"), ("videos", "clip_1")]:
        caption = (small_dataset / folder / f"{key}.txt").read_text().strip()
        embed = load_text_file(small_dataset / "cache" / folder / text_file_name(key))
        padded, mask = pad_text_embeds([embed], 512)
        with torch.no_grad():
            reference, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False, max_sequence_length=512,
                                              device=torch.device("cpu"))
        assert padded.shape == reference.shape == (1, 512, 16)
        assert torch.allclose(padded, reference, atol=1e-6), key
        cleaned = " ".join(html.unescape(caption).split())  # what the pipeline's prompt_clean gives
        assert int(mask.sum()) == embed.shape[0] == len(tokenizer(cleaned).input_ids)


def test_i2v_condition_equals_wan_i2v_pipeline(small_dataset: Path, vae, models):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    pixels = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler())
    references = []
    with torch.no_grad():
        for image in pixels:  # the pipeline takes one image per prompt
            _, condition = pipe.prepare_latents(image[None], batch_size=1, num_channels_latents=4, height=48,
                                                width=64, num_frames=5, dtype=torch.float32,
                                                device=torch.device("cpu"))
            references.append(condition)
    reference = torch.cat(references)
    ours = encode_i2v_condition(vae, pixels, 5)
    assert ours.shape == reference.shape == (2, 8, 2, 6, 8)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.equal(ours[:, :4, 0], torch.ones(2, 4, 6, 8)) and not ours[:, :4, 1].any()  # first-frame mask

    run_latents(small_dataset, vae, models, i2v=True)
    entry = next(e for e in read_manifest(small_dataset / "cache" / "videos")["entries"] if e.frames == 5)
    cached = load_latent_file(small_dataset / "cache" / "videos" / entry.latent_file)
    first = to_pixels([resize_to_bucket(all_frames(small_dataset / "videos" / f"{entry.key}.mp4")[0], (48, 48))])
    assert torch.allclose(cached["image_latents"], encode_i2v_condition(vae, first[:, 0][None], 5)[0], atol=1e-5)


def test_skip_existing_and_stale_files(small_dataset: Path, vae, models, make):
    first = run_latents(small_dataset, vae, models)
    again = run_latents(small_dataset, vae, models)
    assert (again.written, again.skipped) == (0, first.total)
    forced = run_latents(small_dataset, vae, models, skip_existing=False)
    assert (forced.written, forced.skipped) == (first.total, 0)
    make.png(small_dataset / "images" / "img_1.png", 32, 32, seed=99)  # the source changed: its cache is stale
    refreshed = run_latents(small_dataset, vae, models)
    assert (refreshed.written, refreshed.skipped) == (1, first.total - 1)


def test_stop_then_resume_completes_the_rest(small_dataset: Path, vae, models):
    ctx = Recorder(stop_after=2)
    stopped = run_latents(small_dataset, vae, models, ctx=ctx)
    assert stopped.stopped and 0 < stopped.written < stopped.total
    assert read_manifest(small_dataset / "cache" / "images") is None  # a partial cache cannot be trained on
    progress = [f for e, f in ctx.events if e == "progress"]
    assert progress[0]["total"] == 7 and progress[-1]["step"] == stopped.written
    resumed = run_latents(small_dataset, vae, models)
    assert (resumed.written, resumed.skipped) == (resumed.total - stopped.written, stopped.written)
    assert read_manifest(small_dataset / "cache" / "images") is not None


def test_crash_mid_run_then_resume(small_dataset: Path, vae, models, monkeypatch):
    saved = []
    real_save = cache_module.save_latent_file

    def crashing_save(path, *args):
        if len(saved) == 3:
            raise KeyboardInterrupt  # as if the process were killed while writing the 4th file
        real_save(path, *args)
        saved.append(path)

    monkeypatch.setattr(cache_module, "save_latent_file", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        run_latents(small_dataset, vae, models)
    monkeypatch.setattr(cache_module, "save_latent_file", real_save)
    leftovers = [p for p in (small_dataset / "cache").rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # no half-written file
    resumed = run_latents(small_dataset, vae, models)
    assert (resumed.written, resumed.skipped) == (4, 3)


def test_changing_resolution_gives_new_files(small_dataset: Path, vae, models, text_models):
    run_latents(small_dataset, vae, models)
    run_text(small_dataset, text_models, models)
    before = {p.name for p in (small_dataset / "cache" / "images").glob("*_wan.safetensors")}
    toml_file = small_dataset / "dataset.toml"
    toml_file.write_text(toml_file.read_text().replace("resolution = [48, 48]", "resolution = [32, 32]"))
    with pytest.raises(UserError, match="resolution changed since the latents were cached"):
        CachedDataset.from_file(toml_file)
    summary = run_latents(small_dataset, vae, models)
    assert summary.written == summary.total == 7
    after = {p.name for p in (small_dataset / "cache" / "images").glob("*_wan.safetensors")}
    # buckets of 32x32 are 16x64, 32x32, 64x16: aspect 2 is nearer 1 than 4, so 64x32 goes to 32x32 too
    assert after - before == {"img_0_0032x0032_wan.safetensors", "img_1_0032x0032_wan.safetensors",
                              "img_2_0032x0032_wan.safetensors"}
    dataset = CachedDataset.from_file(toml_file)
    assert {item.bucket for item in dataset.items} == {(32, 32)}
    assert {item.latent_file.name for item in dataset.items if item.dataset_index == 1} == after - before


def test_failed_item_is_left_out_and_reported(small_dataset: Path, vae, models):
    (small_dataset / "images" / "img_9.png").write_bytes(b"broken")
    (small_dataset / "images" / "img_9.txt").write_text("broken")
    ctx = Recorder()
    summary = run_latents(small_dataset, vae, models, ctx=ctx)
    assert [p.name for p, _ in summary.failed] == ["img_9.png"] and summary.written == 7
    assert any(e == "warning" and "img_9.png" in f["message"] for e, f in ctx.events)
    assert read_manifest(small_dataset / "cache" / "images")["left_out"] == ["img_9"]


def test_text_cache_needs_every_caption(small_dataset: Path, text_models, models):
    (small_dataset / "videos" / "clip_0.txt").unlink()
    with pytest.raises(UserError, match=r"1 item\(s\) have no caption \(first: clip_0.mp4\)"):
        run_text(small_dataset, text_models, models)


def test_jsonl_frame_folder_with_source_fps_and_slide(tmp_path: Path, vae, models, make):
    frames_dir = tmp_path / "media" / "walk"
    frame_files = [make.png(frames_dir / f"{i:03d}.png", 32, 32, seed=100 + i) for i in range(12)]
    (tmp_path / "videos.jsonl").write_text(json.dumps({"video_path": "media/walk", "caption": "walking"}) + "\n")
    (tmp_path / "dataset.toml").write_text(
        "[general]\nresolution = [32, 32]\n\n[[datasets]]\nvideo_jsonl_file = \"videos.jsonl\"\n"
        "cache_directory = \"cache\"\ntarget_frames = [5]\nframe_extraction = \"slide\"\nsource_fps = 32.0\n")
    summary = run_latents(tmp_path, vae, models)
    assert summary.written == 2
    entries = sorted(read_manifest(tmp_path / "cache")["entries"], key=lambda e: e.start)
    # 12 frames at 32 fps -> every other frame at 16 fps (0, 2, ..., 10); 5-frame windows slide by 1 over those 6
    for entry, source in zip(entries, [(0, 2, 4, 6, 8), (2, 4, 6, 8, 10)]):
        frames = [np.asarray(Image.open(frame_files[i]).convert("RGB")) for i in source]
        cached = load_latent_file(tmp_path / "cache" / entry.latent_file)["latents"]
        assert entry.latent_file == f"walk_{entry.start:05d}-005_0032x0032_wan.safetensors"
        assert torch.allclose(cached, expected_latents(vae, frames, (32, 32)), atol=1e-5)


def test_control_directory_is_refused_before_anything_changes(small_dataset: Path, vae, models):
    run_latents(small_dataset, vae, models)
    (small_dataset / "controls").mkdir()
    toml_file = small_dataset / "dataset.toml"
    toml_file.write_text(toml_file.read_text() + "control_directory = \"controls\"\n")
    with pytest.raises(UserError, match=r"\[\[datasets\]\] #2 \(videos\): control_directory holds control videos for Wan2.1 Fun-Control"):
        run_latents(small_dataset, vae, models)
    assert read_manifest(small_dataset / "cache" / "images") is not None  # the earlier cache is untouched

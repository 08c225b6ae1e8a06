"""`python -m backend generate` end to end: the files it writes, batches, decoding saved latents, stopping."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
from PIL import Image
from safetensors.torch import load_file

from backend.generate.loras import file_sha256


def _frames_of(mp4: Path) -> list[np.ndarray]:
    with av.open(str(mp4)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_video_sidecar_latents_and_frames(demo_ws, lora_files, cli, base_args, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli(*base_args(demo_ws), "--model", "demo-t2v", "--prompt", "a red ball", "--seed", 11,
                               "--loraid", 1, "--loraid", 2, "--multiplier", 1.0, 0.7, "--out_dir", out,
                               "--save_latents", "--save_frames", "--flow_shift", 5.0, "--sampler", "euler")
    assert code == 0, stderr
    sidecar = json.loads(next(out.glob("*.json")).read_text())
    outputs = sidecar["outputs"]
    frames = _frames_of(Path(outputs["video"]))
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3)
    with av.open(outputs["video"]) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert json.loads(container.metadata["comment"])["seed"] == 11
    assert len(outputs["frames"]) == 5
    first_png = np.asarray(Image.open(outputs["frames"][0]))
    assert np.abs(first_png.astype(int) - frames[0].astype(int)).mean() < 12  # same picture, through H.264
    assert sidecar["seed"] == 11 and sidecar["lora_mode"] == "merged"
    assert sidecar["settings"] == {"prompt": "a red ball", "negative_prompt": "", "seed": 11, "steps": 2,
                                   "guidance_scale": 1.0, "guidance_scale_2": None, "flow_shift": 5.0,
                                   "sampler": "euler", "width": 32, "height": 32, "frames": 5, "fps": 16,
                                   "image": None}
    assert [(l["loraid"], l["multiplier"], l["sha256"]) for l in sidecar["loras"]] == [
        (1, 1.0, file_sha256(lora_files.by_id[1])), (2, 0.7, file_sha256(lora_files.by_id[2]))]
    assert sidecar["model"]["model"] == "demo-t2v" and sidecar["memory"] == {
        "cpu_offload": False, "fp8": False, "vae_tiling": False, "blocks_to_swap": 0, "fp8_scaled": False,
        "dtype": "bf16", "memory": "auto", "memory_limit_gb": None,
        "stream_text_encoder": False}
    latents = load_file(outputs["latents"])["latents"]
    assert latents.shape == (1, 16, 2, 4, 4)

    decoded_dir = tmp_path / "decoded"
    code, _, stderr = cli("--workspace", demo_ws.root, "--decode_latents", outputs["latents"], "--out_dir", decoded_dir)
    assert code == 0, stderr
    decoded = json.loads(next(decoded_dir.glob("*.json")).read_text())
    assert decoded["settings"] == sidecar["settings"] and decoded["decoded_from"] == outputs["latents"]
    again = _frames_of(Path(decoded["outputs"]["video"]))
    assert len(again) == 5 and all(np.array_equal(a, b) for a, b in zip(again, frames))


def test_from_file_batch_with_line_options_and_png_text_chunk(demo_ws, cli, base_args, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two results\na red ball --d 7 --f 1 --n blurry\n\na blue cube --d 8\n", encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, stderr = cli(*base_args(demo_ws), "--model", "demo-t2v", "--from_file", prompts, "--out_dir", out)
    assert code == 0, stderr
    steps = [line.split()[1] for line in stdout.splitlines() if line.startswith("step ")]
    total = len(steps)  # a progress line per denoising step over the whole batch, counted across prompts
    assert total > 0 and steps == [f"{n}/{total}" for n in range(1, total + 1)]
    assert [line.split(",")[0] for line in stdout.splitlines() if line.startswith("generating ")] == [
        "generating 1x32x32", "generating 5x32x32"]
    assert stdout.count("decoding the latents") == 2
    records = sorted((json.loads(p.read_text()) for p in out.glob("*.json")), key=lambda r: r["seed"])
    assert [(r["settings"]["prompt"], r["seed"], r["settings"]["frames"]) for r in records] == [
        ("a red ball", 7, 1), ("a blue cube", 8, 5)]
    assert records[0]["settings"]["negative_prompt"] == "blurry" and records[1]["settings"]["negative_prompt"] == ""
    image = Image.open(records[0]["outputs"]["image"])
    assert image.size == (32, 32)
    assert json.loads(image.text["parameters"])["settings"] == records[0]["settings"]
    assert len(_frames_of(Path(records[1]["outputs"]["video"]))) == 5


def test_stop_request_ends_the_job_without_writing_results(demo_ws, base_args, tmp_path, monkeypatch):
    from backend.__main__ import main

    job = tmp_path / "job"
    job.mkdir()
    (job / "stop_requested").write_text("{}")
    monkeypatch.setenv("LORAID_JOB_DIR", str(job))
    out = tmp_path / "out"
    assert main(["generate", *map(str, base_args(demo_ws)), "--model", "demo-t2v", "--prompt", "a red ball",
                 "--out_dir", str(out)]) == 0
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "progress", "end"]
    assert events[1] == {**events[1], "step": 1, "total": 2} and events[-1]["status"] == "stopped"
    assert not out.exists() or not any(out.iterdir())

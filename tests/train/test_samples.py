"""Samples during training: written at their interval, announced in events, and equal to what the generator makes
from the checkpoint saved at the same step (the sample shows the LoRA as it was then, not the base model)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backend.errors import UserError
from backend.generate.engine import GenerateSession, LoraRequest
from backend.generate.memory import MemoryOptions
from backend.generate.pipeline import ModelChoice
from backend.generate.settings import GenerateSettings
from backend.jobs.protocol import JobContext
from backend.train.loop import train

PROMPTS = "a red ball on grass --w 32 --h 32 --f 1 --s 3 --d 7 --g 1.0\na blue cube --w 32 --h 32 --f 5 --s 2 --d 8\n"


def generated_png(workspace, lora_path, multiplier: float) -> np.ndarray:
    session = GenerateSession(ModelChoice(workspace=workspace.root, model="demo-t2v"),
                              LoraRequest([str(lora_path)], multipliers=[multiplier], hooked=True),
                              MemoryOptions(dtype="fp32"))  # the demo trained in float32 (mixed_precision no)
    settings = GenerateSettings(prompt="a red ball on grass", width=32, height=32, frames=1, steps=3, seed=7,
                                guidance_scale=1.0, sampler="unipc", flow_shift=3.0)
    frames = session.decode(session.denoise(settings))
    return (np.clip(frames[0], 0, 1) * 255).round().astype(np.uint8)


def test_samples_at_their_interval_match_the_checkpoint_of_that_step(demo_workspace, demo_settings, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    events = tmp_path / "events.jsonl"
    settings = demo_settings.with_overrides({
        "output_dir": str(tmp_path), "max_train_steps": 4, "learning_rate": 0.05, "sample_prompts": str(prompts),
        "sample_every_n_steps": 2, "save_every_n_steps": 2, "discrete_flow_shift": 3.0})
    assert train(settings, demo_workspace, JobContext(events_path=events), log=lambda *_: None) == "succeeded"

    samples = [e for e in map(json.loads, events.read_text().splitlines()) if e.get("event") == "sample"]
    assert [(e["step"], e["index"]) for e in samples] == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert {e["path"].rsplit(".", 1)[1] for e in samples} == {"png", "mp4"}
    for event in samples:
        assert (tmp_path / "samples" / event["path"].rsplit("/", 1)[1]).stat().st_size > 0
    assert not list(tmp_path.glob("*.png")) + list(tmp_path.glob("*.mp4")), "samples sit among the checkpoints"

    sample = np.asarray(Image.open(tmp_path / "samples" / "demo-concept-a-step000002-00.png").convert("RGB"))
    with_lora = generated_png(demo_workspace, tmp_path / "demo-concept-a-step000002.safetensors", 1.0)
    base = generated_png(demo_workspace, tmp_path / "demo-concept-a-step000002.safetensors", 0.0)
    assert np.abs(sample.astype(int) - with_lora.astype(int)).max() <= 1
    assert np.abs(sample.astype(int) - base.astype(int)).max() > 1, "the sample should show the trained LoRA"


def test_sample_settings_without_a_prompts_file_are_refused(demo_workspace, demo_settings, tmp_path):
    settings = demo_settings.with_overrides({"output_dir": str(tmp_path), "sample_every_n_steps": 2})
    with pytest.raises(UserError, match="sample_prompts"):
        train(settings, demo_workspace, JobContext(), log=lambda *_: None)

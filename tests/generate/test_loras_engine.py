"""Generation with LoRAs: determinism, multiplier 0, merged vs hooked, and parity with diffusers' own LoRA loader."""
from __future__ import annotations

import pytest
import torch

from backend.generate.engine import GenerateSession, LoraRequest
from backend.generate.loras import file_sha256, pick_loras
from backend.generate.memory import MemoryOptions
from backend.generate.pipeline import ModelChoice


def _session(ws, files=(), multipliers=None, hooked=False):
    """float32 weights: these tests check the LoRA arithmetic itself (bf16, the default, is tested elsewhere)."""
    return GenerateSession(ModelChoice(workspace=ws.root, model="demo-t2v"),
                           LoraRequest(files=[str(f) for f in files], multipliers=multipliers, hooked=hooked),
                           MemoryOptions(dtype="fp32"))


@pytest.fixture(scope="module")
def base_session(demo_ws):
    return _session(demo_ws)


def test_same_seed_gives_identical_latents_and_other_seed_differs(base_session, tiny):
    first = base_session.denoise(tiny())
    assert torch.equal(first, base_session.denoise(tiny()))
    assert not torch.equal(first, base_session.denoise(tiny(seed=4)))
    assert base_session.decode(first).shape == (5, 32, 32, 3)


def test_multiplier_zero_merged_is_exactly_the_base_model(demo_ws, base_session, lora_files, tiny):
    zero = _session(demo_ws, [lora_files.full], [0.0]).denoise(tiny())
    assert torch.equal(zero, base_session.denoise(tiny()))


def test_hooked_multiplier_zero_is_base_and_live_multiplier_matches_merged(demo_ws, base_session, lora_files, tiny):
    hooked = _session(demo_ws, [lora_files.full], [0.0], hooked=True)
    assert torch.equal(hooked.denoise(tiny()), base_session.denoise(tiny()))
    for network in hooked.networks:
        network.multiplier = 0.7
    merged = _session(demo_ws, [lora_files.full], [0.7]).denoise(tiny())
    assert (merged - base_session.denoise(tiny())).abs().max() > 1e-3  # the LoRA really changes the result
    torch.testing.assert_close(hooked.denoise(tiny()), merged, atol=1e-5, rtol=0)


def test_loraid_picks_the_registered_files_with_one_multiplier_each(demo_ws, lora_files):
    picked = pick_loras([str(lora_files.full)], [2, 1], [0.5, 1.0, 0.7], demo_ws.root, "demo-t2v")
    assert [(p.path.resolve(), p.multiplier, p.loraid) for p in picked] == [
        (lora_files.full.resolve(), 0.5, None), (lora_files.by_id[2].resolve(), 1.0, 2),
        (lora_files.by_id[1].resolve(), 0.7, 1)]
    assert picked[1].sha256 == file_sha256(lora_files.by_id[2])
    assert [p.multiplier for p in pick_loras([], [1, 2], [0.3], demo_ws.root)] == [0.3, 0.3]


def test_full_coverage_lora_matches_diffusers_load_lora_weights(demo_ws, base_session, lora_files, tiny):
    """diffusers' own loader (PEFT) on the same pipeline, same seed and CFG; differences are float32 rounding."""
    from safetensors.torch import load_file

    from backend.models.demo import load_demo_pipeline

    settings = tiny(guidance_scale=2.0, steps=3)
    ours = _session(demo_ws, [lora_files.full], [1.0]).denoise(settings)

    pipeline = load_demo_pipeline(demo_ws)
    state = {key: value.clone() for key, value in load_file(str(lora_files.full)).items()}  # the loader scales in place
    pipeline.load_lora_weights(state)
    theirs = pipeline(settings.prompt, negative_prompt=settings.negative_prompt, height=32, width=32, num_frames=5,
                      num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                      generator=torch.Generator().manual_seed(settings.seed), output_type="latent").frames
    assert (theirs - base_session.denoise(settings)).abs().max() > 1e-2  # diffusers really applied the LoRA
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

"""Generation as real checkpoints need it, on the demo models: a bf16 transformer by default (fp32 on request),
scaled fp8 storage, CPU offload of the idle parts (the A14B expert swapped at the boundary), the VAE decode where
the offloaded VAE computes, and the memory plan's glue."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.generate.engine import GenerateSession, LoraRequest, decode_latents, decode_video
from backend.generate.memory import MemoryOptions, plan_memory
from backend.generate.offload import offload_all, offload_idle_parts
from backend.generate.pipeline import ModelChoice
from backend.models.fp8_scaled import ScaledFp8Linear
from backend.models.registry import get_model_kind
from backend.train.memory_plan import GIB


def _video(session, settings):
    latents = session.denoise(settings)
    return latents, session.decode(latents)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def fp32_run(demo_ws, tiny):
    session = GenerateSession(ModelChoice(workspace=demo_ws.root, model="demo-t2v"), memory=MemoryOptions(dtype="fp32"))
    assert next(session.model.transformers["main"].blocks.parameters()).dtype == torch.float32
    return _video(session, tiny())


def test_transformer_is_bf16_by_default_and_gives_the_fp32_video_within_bf16_tolerance(demo_ws, tiny, fp32_run):
    session = GenerateSession(ModelChoice(workspace=demo_ws.root, model="demo-t2v"))
    transformer = session.model.transformers["main"]
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert session.pipeline.vae.dtype == torch.float32
    latents, frames = _video(session, tiny())
    reference_latents, reference_frames = fp32_run
    assert _relative(latents, reference_latents) < 0.05  # bf16 rounding over 2 steps of 8 blocks
    assert np.abs(frames - reference_frames).mean() < 0.02


def test_scaled_fp8_generation_stays_close_to_bf16_with_merged_or_hooked_loras(demo_ws, tiny, lora_files):
    choice = ModelChoice(workspace=demo_ws.root, model="demo-t2v")
    runs = {}
    for name, memory, hooked in (("bf16", MemoryOptions(), False), ("scaled", MemoryOptions(fp8_scaled=True), False),
                                 ("scaled-hooked", MemoryOptions(fp8_scaled=True), True)):
        session = GenerateSession(choice, LoraRequest([str(lora_files.full)], hooked=hooked), memory)
        if name != "bf16":
            assert isinstance(session.model.transformers["main"].blocks[0].ffn.net[2], ScaledFp8Linear)
        runs[name] = session.denoise(tiny())
    assert _relative(runs["scaled"], runs["bf16"]) < 0.1
    assert _relative(runs["scaled-hooked"], runs["bf16"]) < 0.1
    assert not torch.equal(runs["scaled"], runs["bf16"])


def _names(pipeline) -> dict[int, str]:
    return {id(getattr(pipeline, name)): name for name in ("text_encoder", "transformer", "transformer_2", "vae")
            if getattr(pipeline, name, None) is not None}


def test_cpu_offload_chain_gives_the_same_video_and_swaps_the_idle_expert_at_the_boundary(demo_ws, tiny):
    """The offload hooks run here with the CPU as the compute device: the same hooks and calls as on a GPU, where
    accelerate skips the copies (a part already on the CPU is not moved)."""
    choice = ModelChoice(workspace=demo_ws.root, model="demo-a14b")
    plain = GenerateSession(choice)
    reference_latents, reference_frames = _video(plain, tiny(steps=4))
    session = GenerateSession(choice)
    hooks = offload_idle_parts(session.pipeline, torch.device("cpu"))
    names = _names(session.pipeline)
    # the chain: each part's hook sends the part before it back to the CPU when it starts, so the high-noise
    # expert leaves when the low-noise one starts (the boundary) and the low-noise one when the VAE decodes
    assert [names[id(h.model)] for h in hooks] == ["text_encoder", "transformer", "transformer_2", "vae"]
    assert [names[id(h.hook.prev_module_hook.model)] if h.hook.prev_module_hook else None for h in hooks] == [
        None, "text_encoder", "transformer", "transformer_2"]
    started = []
    for hook in hooks:
        original = hook.hook.pre_forward

        def pre_forward(module, *args, original=original, **kwargs):
            started.append(names[id(module)])
            return original(module, *args, **kwargs)

        hook.hook.pre_forward = pre_forward
    latents = session.denoise(tiny(steps=4))
    frames = decode_latents(session.pipeline.vae, latents)
    assert torch.equal(latents, reference_latents) and np.array_equal(frames, reference_frames)
    parts = ["text_encoder", "transformer", "transformer_2", "vae"]
    assert set(started) == set(parts) and started == sorted(started, key=parts.index)  # one expert, then the other
    parked = []
    for hook in hooks:
        hook.offload = lambda hook=hook: parked.append(names[id(hook.model)])
    offload_all(session.pipeline)
    assert parked == parts  # between prompts every part waits on the CPU


def test_decode_sends_the_latents_where_the_offloaded_vae_computes(demo_ws):
    """The `slow_conv3d_forward ... CUDA` failure: the latents followed the VAE's CPU-resident weights, then the
    offload hook moved the weights to the GPU inside `decode`. Here the hook's compute device is `meta`: a latent left
    on the CPU would meet meta weights and fail the same way."""
    from accelerate import cpu_offload_with_hook
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(str(demo_ws.vae), local_files_only=True).eval()
    cpu_offload_with_hook(vae, torch.device("meta"))
    assert next(vae.parameters()).device.type == "cpu"
    video = decode_video(vae, torch.randn(1, vae.config.z_dim, 2, 4, 4))
    assert video.device.type == "meta" and video.shape == (1, 3, 5, 32, 32)


def test_memory_plan_on_cpu_changes_nothing_and_on_a_24gb_card_plans_14b(monkeypatch):
    lines = []
    options = MemoryOptions()
    config = get_model_kind("wan2.1-t2v-14b").config()
    assert plan_memory(options, config, 1, (81, 480, 832), int(11.4e9), int(0.5 * GIB), lines.append) == options
    assert lines == ["memory=auto: generating on the CPU, nothing to plan"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (139 * GIB, 140 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: type("P", (), {"total_memory": 140 * GIB})())
    fractions = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: fractions.append(f))
    lines.clear()
    planned = plan_memory(MemoryOptions(memory_limit_gb=24), config, 1, (81, 480, 832), int(11.4e9), int(0.5 * GIB),
                          lines.append)
    assert planned.fp8_scaled and planned.cpu_offload and not planned.fp8
    assert len(fractions) == 1 and lines[-1].startswith("memory=auto: fp8_scaled") is False
    assert any("CPU offload on" in line for line in lines) and any("scaled fp8" in line for line in lines)
    manual = MemoryOptions(memory="manual", memory_limit_gb=24)
    assert plan_memory(manual, config, 1, (81, 480, 832), int(11.4e9), int(0.5 * GIB), lines.append) == manual
    from backend.errors import UserError

    with pytest.raises(UserError, match="smaller size"):
        plan_memory(MemoryOptions(memory_limit_gb=4), config, 1, (81, 480, 832), int(11.4e9), int(0.5 * GIB),
                    lines.append)


def test_record_round_trip_keeps_the_new_memory_options():
    options = MemoryOptions(fp8_scaled=True, dtype="fp32", memory="manual", memory_limit_gb=24.0)
    assert MemoryOptions.from_dict(options.to_dict()) == options
    assert MemoryOptions.from_dict({"cpu_offload": True, "fp8": False, "vae_tiling": True}) == MemoryOptions(
        cpu_offload=True, vae_tiling=True)


def test_streamed_text_encoder_gives_the_same_video(demo_ws, tiny):
    """For cards smaller than UMT5-XXL: the text encoder's layers are copied in one at a time (here onto the CPU)."""
    choice = ModelChoice(workspace=demo_ws.root, model="demo-t2v")
    reference_latents, _ = _video(GenerateSession(choice), tiny())
    session = GenerateSession(choice)
    hooks = offload_idle_parts(session.pipeline, torch.device("cpu"), stream_text_encoder=True)
    names = _names(session.pipeline)
    assert [names[id(h.model)] for h in hooks] == ["transformer", "vae"]
    encoder = session.pipeline.text_encoder
    assert {p.device.type for p in encoder.parameters()} == {"meta"}  # the weights wait in accelerate's CPU map
    latents, _ = _video(session, tiny())
    assert torch.equal(latents, reference_latents)


def test_generation_plan_streams_the_text_encoder_on_an_8gb_card():
    from backend.train.memory_plan import GenerateRun, budget_bytes, plan_generation, shape_from_config, tokens_for

    shape = shape_from_config("1.3b", get_model_kind("wan2.1-t2v-1.3b").config())
    plan = plan_generation(GenerateRun(shape, tokens_for(81, 480, 832), 480, 832), budget_bytes(None, 8))
    assert plan.fits and plan.choice.cpu_offload and plan.choice.stream_text_encoder
    assert plan.choice.storage == "bf16" and plan.choice.blocks_to_swap == 0

"""The demo A14B pair: the high-noise expert runs above the boundary timestep, the low-noise one below, each with
its own guidance scale."""
from __future__ import annotations

import pytest
import torch

from backend.generate.engine import GenerateSession
from backend.generate.pipeline import ModelChoice
from backend.generate.settings import make_scheduler
from backend.models.registry import get_model_kind

STEPS = 6


@pytest.fixture(scope="module")
def pair_session(demo_ws):
    return GenerateSession(ModelChoice(workspace=demo_ws.root, model="demo-a14b"))


def _record_calls(session):
    """Per transformer call: (expert, output tensor); hooks removed by the caller."""
    calls, handles = [], []
    for role, transformer in session.model.transformers.items():
        handles.append(transformer.register_forward_hook(
            lambda module, args, kwargs, output, role=role: calls.append((role, output[0].clone())), with_kwargs=True))
    return calls, handles


def test_experts_switch_at_the_boundary_step(pair_session, tiny):
    boundary = get_model_kind("demo-a14b").timestep_boundary * 1000
    scheduler = make_scheduler("unipc", 3.0)
    scheduler.set_timesteps(STEPS)
    expected = next(i for i, t in enumerate(scheduler.timesteps) if t < boundary)
    assert 0 < expected < STEPS  # the switch falls inside the run, so the test can see it

    calls, handles = _record_calls(pair_session)
    try:
        pair_session.denoise(tiny(steps=STEPS, frames=1))
    finally:
        for handle in handles:
            handle.remove()
    roles = [role for role, _ in calls]  # guidance 1.0: one call per step
    assert roles == ["high"] * expected + ["low"] * (STEPS - expected)


def test_guidance_scale_2_acts_only_on_the_low_noise_expert(pair_session, tiny):
    outputs = []
    for guidance_2 in (4.0, 1.5):
        calls, handles = _record_calls(pair_session)
        try:
            latents = pair_session.denoise(tiny(steps=STEPS, frames=1, guidance_scale=4.0, guidance_scale_2=guidance_2))
        finally:
            for handle in handles:
                handle.remove()
        outputs.append((calls, latents))
    (calls_a, latents_a), (calls_b, latents_b) = outputs
    highs = [(a, b) for (role, a), (_, b) in zip(calls_a, calls_b) if role == "high"]
    assert highs and all(torch.equal(a, b) for a, b in highs)  # the high-noise stage is untouched
    assert not torch.equal(latents_a, latents_b)  # the low-noise guidance changed the result

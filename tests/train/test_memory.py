"""fp8 storage of the frozen base: base weights in float8, adapters in fp32, gradients still reach the adapters."""
from __future__ import annotations

import pytest
import torch

from backend.errors import UserError
from backend.models.registry import get_model_kind
from backend.train.memory import apply_memory_settings
from backend.train.networks import ExpertPlan, build_networks, network_args_for


def test_fp8_base_keeps_adapters_fp32_and_trainable(demo_workspace, demo_settings):
    settings = demo_settings.with_overrides({"fp8_base": True})
    kind = get_model_kind("demo-t2v")
    plan = ExpertPlan.from_settings(settings, kind)
    models, networks = build_networks(settings, kind, plan, {"single": demo_workspace.demo_t2v /
                                                             "transformer.safetensors"}, torch.float32, [])
    model, network = models["single"], networks["single"]
    apply_memory_settings(model, settings)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert all(p.dtype == torch.float32 for p in network.trainable_params())
    torch.nn.init.normal_(next(iter(network.adapters.values())).lora_up)
    out = model(hidden_states=torch.randn(1, 16, 1, 8, 8), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 16, 32), return_dict=False)[0]
    out.square().mean().backward()
    assert all(p.grad is not None for p in network.trainable_params()[:2])


def test_fp8_base_with_dora_is_refused(demo_workspace, demo_settings):
    settings = demo_settings.with_overrides({"fp8_base": True, "network_type": "dora"})
    kind = get_model_kind("demo-t2v")
    with pytest.raises(UserError, match="DoRA"):
        build_networks(settings, kind, ExpertPlan.from_settings(settings, kind),
                       {"single": demo_workspace.demo_t2v / "transformer.safetensors"}, torch.float32,
                       network_args_for(settings, None))


def test_fp8_scaled_with_dora_trains_and_matches_the_full_precision_loss(demo_workspace, demo_settings):
    from backend.models.fp8_scaled import ScaledFp8Linear

    kind = get_model_kind("demo-t2v")
    file = {"single": demo_workspace.demo_t2v / "transformer.safetensors"}
    losses, grads = {}, {}
    for scaled in (False, True):
        settings = demo_settings.with_overrides({"fp8_scaled": scaled, "network_type": "dora"})
        torch.manual_seed(0)
        models, networks = build_networks(settings, kind, ExpertPlan.from_settings(settings, kind), file,
                                          torch.float32, network_args_for(settings, None))
        model, network = models["single"], networks["single"]
        apply_memory_settings(model, settings)
        assert isinstance(model.blocks[0].attn1.to_q, ScaledFp8Linear) == scaled
        assert all(p.dtype == torch.float32 for p in network.trainable_params())
        generator = torch.Generator().manual_seed(1)
        torch.nn.init.normal_(next(iter(network.adapters.values())).lora_up, generator=generator)
        out = model(hidden_states=torch.randn(1, 16, 1, 8, 8, generator=generator), timestep=torch.tensor([500.0]),
                    encoder_hidden_states=torch.randn(1, 16, 32, generator=generator), return_dict=False)[0]
        loss = out.square().mean()
        loss.backward()
        losses[scaled] = loss.item()
        grads[scaled] = torch.cat([p.grad.flatten() for p in network.trainable_params() if p.grad is not None])
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=0) > 0.99


def test_fp8_base_and_fp8_scaled_together_are_refused(demo_workspace, demo_settings):
    settings = demo_settings.with_overrides({"fp8_base": True, "fp8_scaled": True})
    kind = get_model_kind("demo-t2v")
    with pytest.raises(UserError, match="turn one of them off"):
        build_networks(settings, kind, ExpertPlan.from_settings(settings, kind),
                       {"single": demo_workspace.demo_t2v / "transformer.safetensors"}, torch.float32, [])


def test_training_with_fp8_scaled_follows_the_full_precision_run(demo_workspace, demo_settings, tmp_path):
    """The whole trainer, 6 steps of DoRA on the demo with the base in scaled fp8 and in float32: the logged losses
    stay within fp8 rounding of each other, the plan says it has nothing to do on a CPU, the files load."""
    import json

    from backend.adapters.formats import load_lora
    from backend.jobs.protocol import JobContext
    from backend.train.loop import train

    losses, lines = {}, []
    for scaled in (False, True):
        folder = tmp_path / ("scaled" if scaled else "plain")
        settings = demo_settings.with_overrides({"output_dir": str(folder), "fp8_scaled": scaled, "max_train_steps": 6,
                                                 "network_type": "dora", "log_every_n_steps": 1})
        events = folder / "events.jsonl"
        assert train(settings, demo_workspace, JobContext(events_path=events), log=lines.append) == "succeeded"
        losses[scaled] = [e["loss"] for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "step"]
        assert load_lora(folder / f"{settings.output_name}.safetensors").flags["use_dora"]
    assert len(losses[True]) == 6 and losses[True] != losses[False]  # the storage really differs
    for plain, scaled in zip(losses[False], losses[True]):
        assert scaled == pytest.approx(plain, rel=0.03)
    assert "memory=auto: training on the CPU, nothing to plan" in lines

"""The memory plan's choices for 8/16/24/48/80 GiB cards on 1.3B, 14B and A14B (both experts), at the issue's clip
shape (81 frames x 480x832 = 32,760 tokens, rank 32, AdamW), its parameter counts against the real model, and the
trainer's glue (CPU: nothing to plan; manual: untouched; presets plan to fit their limit)."""
from __future__ import annotations

import json

import pytest
import torch

from backend.errors import UserError
from backend.models.registry import get_model_kind
from backend.train.memory_plan import (
    CUDA_CONTEXT,
    GIB,
    GenerateRun,
    TrainChoice,
    TrainRun,
    allocator_fraction,
    budget_bytes,
    plan_generation,
    plan_training,
    shape_from_config,
    tokens_for,
    train_parts,
)

TOKENS = tokens_for(81, 480, 832)
KINDS = {"1.3B": "wan2.1-t2v-1.3b", "14B": "wan2.1-t2v-14b", "A14B": "wan2.2-t2v-a14b"}


def shape(label: str):
    kind = get_model_kind(KINDS[label])
    return shape_from_config(kind.name, kind.config(kind.experts[0] if kind.has_experts else None))


def train_run(label: str, tokens: int = TOKENS) -> TrainRun:
    experts = 2 if label == "A14B" else 1
    return TrainRun(shape(label), tokens, resident_experts=experts, network_copies=experts)


def test_tokens_of_the_issue_shape():
    assert TOKENS == 21 * 30 * 52 == 32_760


@pytest.mark.parametrize("label", ["1.3B", "14B", "A14B"])
def test_parameter_counts_match_the_real_model_built_on_meta(label):
    from diffusers import WanTransformer3DModel

    kind = get_model_kind(KINDS[label])
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(kind.config(kind.experts[0] if kind.has_experts else None))
    s = shape(label)
    block = model.blocks[0]
    linears = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    assert s.block_linear_params == linears
    assert s.block_linear_params + s.block_other_params == sum(p.numel() for p in block.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert s.num_blocks * (s.block_linear_params + s.block_other_params) + s.outer_params == total


# (card GiB, model) -> expected (fits, checkpointing, fp8_scaled, offload_activations, swapped blocks low..high)
TABLE = {
    (80, "1.3B"): (True, True, False, False, (0, 0)),
    (48, "1.3B"): (True, True, False, False, (0, 0)),
    (24, "1.3B"): (True, True, False, False, (0, 0)),
    (16, "1.3B"): (True, True, False, False, (0, 0)),
    (8, "1.3B"): (True, True, True, True, (1, 29)),
    (80, "14B"): (True, True, False, False, (0, 0)),
    (48, "14B"): (True, True, True, False, (0, 0)),
    (24, "14B"): (True, True, True, True, (20, 36)),
    (16, "14B"): (False, True, True, True, (39, 39)),
    (8, "14B"): (False, True, True, True, (39, 39)),
    (80, "A14B"): (True, True, True, False, (0, 0)),
    (48, "A14B"): (True, True, True, True, (1, 20)),
    (24, "A14B"): (True, True, True, True, (30, 39)),
    (16, "A14B"): (False, True, True, True, (39, 39)),
    (8, "A14B"): (False, True, True, True, (39, 39)),
}


@pytest.mark.parametrize("card,label", sorted(TABLE))
def test_training_plan_table(card, label):
    run = train_run(label)
    budget = budget_bytes(None, card)
    plan = plan_training(run, budget)
    fits, checkpointing, fp8, offload, (low, high) = TABLE[card, label]
    choice = plan.choice
    assert (plan.fits, choice.gradient_checkpointing, choice.fp8_scaled, choice.offload_activations) == \
        (fits, checkpointing, fp8, offload), plan.reasons
    assert low <= choice.blocks_to_swap <= high, plan.reasons
    assert not choice.fp8_base  # auto picks the scaled kind
    assert (plan.estimate <= budget) == plan.fits
    assert len(plan.reasons) >= 1 and all(isinstance(reason, str) and reason for reason in plan.reasons)
    if plan.fits and choice.blocks_to_swap:  # the fewest blocks: one fewer would not fit
        fewer = TrainChoice(**{**choice.__dict__, "blocks_to_swap": choice.blocks_to_swap - 1})
        assert sum(train_parts(run, fewer).values()) > budget
    low, high = KEPT.get((card, label), (0, 0))
    assert low <= choice.uncheckpointed_blocks <= high, plan.reasons
    if choice.uncheckpointed_blocks:  # the most blocks without recomputation: one more would not fit
        more = TrainChoice(**{**choice.__dict__, "uncheckpointed_blocks": choice.uncheckpointed_blocks + 1})
        assert sum(train_parts(run, more).values()) > budget
        assert not (choice.fp8_scaled or choice.offload_activations or choice.blocks_to_swap)


# (card GiB, model) -> blocks that keep their activations (the others are checkpointed), where checkpointing alone
# leaves memory spare; 1.3B keeps ~3.4 GiB per such block at this shape, 14B ~13 GiB.
KEPT = {(80, "1.3B"): (15, 24), (48, "1.3B"): (7, 13), (24, "1.3B"): (1, 5), (80, "14B"): (1, 4)}


def test_small_bucket_on_a_big_card_needs_nothing():
    plan = plan_training(train_run("1.3B", tokens_for(17, 256, 256)), budget_bytes(None, 80))
    assert plan.fits and plan.choice == TrainChoice()
    assert plan.reasons == ["gradient checkpointing off: every activation fits"]


def test_estimate_is_near_the_measured_bf16_checkpointed_peaks():
    """docs: 1.3B peaked at 13.0-13.7 GB and 14B at 58.7 GB (bf16, checkpointing, H200, 32,760 tokens)."""
    for label, measured_gb in (("1.3B", 13.4), ("14B", 58.7)):
        estimate = sum(train_parts(train_run(label), TrainChoice(gradient_checkpointing=True)).values())
        assert 0.85 < estimate / (measured_gb * 1e9) < 1.2, label


def test_estimate_without_checkpointing_is_near_the_measured_peak():
    """docs: 1.3B without checkpointing peaked at 101.0 GiB allocated (bf16, H200, 32,760 tokens), so it trains
    without checkpointing on a 141 GB card and with it on an 80 GB one."""
    parts = train_parts(train_run("1.3B"), TrainChoice())
    allocated = sum(parts.values()) - parts["fragmentation"]  # slack kept free, not allocated
    assert 1.0 < allocated / (101.0 * GIB) < 1.08
    assert not plan_training(train_run("1.3B"), budget_bytes(139 * GIB, None)).choice.gradient_checkpointing
    assert plan_training(train_run("1.3B"), budget_bytes(79 * GIB, None)).choice.gradient_checkpointing


def test_each_saver_lowers_the_estimate():
    run = train_run("14B")
    steps = [TrainChoice(gradient_checkpointing=True), TrainChoice(gradient_checkpointing=True, fp8_scaled=True),
             TrainChoice(gradient_checkpointing=True, fp8_scaled=True, offload_activations=True),
             TrainChoice(gradient_checkpointing=True, fp8_scaled=True, offload_activations=True, blocks_to_swap=20)]
    estimates = [sum(train_parts(run, choice).values()) for choice in steps]
    assert estimates == sorted(estimates, reverse=True) and len(set(estimates)) == len(estimates)


def test_budget_and_allocator_fraction():
    assert budget_bytes(None, 24) == 24 * GIB - CUDA_CONTEXT
    assert budget_bytes(10 * GIB, 24) == 10 * GIB  # the card has less free than the limit
    assert budget_bytes(70 * GIB, None) == 70 * GIB
    assert allocator_fraction(24, 80 * GIB) == pytest.approx((24 * GIB - CUDA_CONTEXT) / (80 * GIB))


@pytest.mark.parametrize("card,label,expected", [
    (80, "14B", ("bf16", False, 0)),
    (24, "14B", ("fp8_scaled", True, 0)),
    (24, "A14B", ("fp8_scaled", True, 0)),
    (16, "14B", ("fp8_scaled", True, "some")),
    (24, "1.3B", ("bf16", False, 0)),
])
def test_generation_plan(card, label, expected):
    run = GenerateRun(shape(label), TOKENS, 480, 832, experts=2 if label == "A14B" else 1)
    plan = plan_generation(run, budget_bytes(None, card))
    storage, offload, swapped = expected
    assert plan.fits
    assert (plan.choice.storage, plan.choice.cpu_offload) == (storage, offload)
    assert plan.choice.blocks_to_swap > 0 if swapped == "some" else plan.choice.blocks_to_swap == swapped


# ---- the trainer's glue --------------------------------------------------------------------------------------------

class _Dataset:
    def __init__(self, buckets, batch_size: int = 1):
        self.datasets = [type("D", (), {"index": 0, "batch_size": batch_size})()]
        self._buckets = buckets

    def buckets(self):
        return {(0, w, h, f): [] for (w, h, f) in self._buckets}


def test_largest_bucket_tokens_counts_frames_pixels_and_batch():
    from backend.train.memory import largest_bucket_tokens

    dataset = _Dataset([(832, 480, 81), (512, 512, 33), (1024, 1024, 1)], batch_size=2)
    assert largest_bucket_tokens(dataset) == 2 * 32_760


def test_on_the_cpu_auto_changes_nothing_and_manual_is_untouched(demo_settings):
    from backend.train.memory import plan_memory

    lines = []
    kind = get_model_kind("wan2.1-t2v-14b")
    auto = demo_settings.with_overrides({"memory": "auto"})
    assert plan_memory(auto, kind, 1, _Dataset([(832, 480, 81)]), torch.device("cpu"), lines.append) == auto
    manual = demo_settings.with_overrides({"memory": "manual", "gradient_checkpointing": True})
    assert plan_memory(manual, kind, 1, _Dataset([(832, 480, 81)]), torch.device("cpu"), lines.append) == manual
    assert lines == ["memory=auto: training on the CPU, nothing to plan",
                     "memory=manual: using gradient_checkpointing / fp8 / offload_activations / blocks_to_swap as set"]


@pytest.fixture
def fake_80gib_card(monkeypatch) -> list[float]:
    """The CUDA calls the plan makes, answered as an 80 GiB card would: the glue's own logic runs. Returns the
    allocator fractions set."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (79 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: type("P", (), {"total_memory": 80 * GIB})())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    fractions = []

    def set_fraction(fraction, device=None):  # as torch's: the device must name its index
        assert isinstance(device, int) or getattr(device, "index", None) is not None, device
        fractions.append(fraction)

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    return fractions


def test_auto_on_a_gpu_applies_the_plan_and_refuses_with_one_sentence(demo_settings, fake_80gib_card):
    from backend.train import memory

    fractions = fake_80gib_card
    kind = get_model_kind("wan2.1-t2v-14b")
    lines = []
    settings = demo_settings.with_overrides({"memory_limit_gb": 24, "fp8_base": True, "mixed_precision": "bf16"})
    planned = memory.plan_memory(settings, kind, 1, _Dataset([(832, 480, 81)]), torch.device("cuda"), lines.append)
    assert fractions == [pytest.approx(allocator_fraction(24, 80 * GIB))]
    assert planned.fp8_scaled and not planned.fp8_base and planned.gradient_checkpointing
    assert planned.offload_activations and planned.blocks_to_swap > 0
    assert any(line.startswith("memory=auto replaces") and "fp8_base=True" in line for line in lines)
    assert sum(line.startswith("memory=auto:") for line in lines) >= 5  # one per decision + the summary
    with pytest.raises(UserError) as refused:
        memory.plan_memory(settings.with_overrides({"memory_limit_gb": 8}), kind, 1, _Dataset([(832, 480, 81)]),
                           torch.device("cuda"), lines.append)
    assert str(refused.value).count(". ") == 0 and "smaller buckets" in str(refused.value)


def test_lora_moe_stage2_plans_for_every_experts_adapters(fake_80gib_card):
    """Stage 2 trains one adapter per expert on each module: two experts' adapters need more swapped blocks than one
    under the same 24 GiB cap on both A14B noise experts."""
    from backend.moe.settings import MoeTrainSettings
    from backend.train import memory

    kind = get_model_kind("wan2.2-t2v-a14b")
    settings = MoeTrainSettings(model_kind="wan2.2-t2v-a14b", expert="both", network_dim=16, memory_limit_gb=24,
                                mixed_precision="bf16", expert_names=["red", "blue"])
    one, two = (memory.plan_memory(settings, kind, 2, _Dataset([(832, 480, 81)]), torch.device("cuda"),
                                   lambda *_: None, adapters_per_module=count) for count in (1, 2))
    assert one.fp8_scaled and two.fp8_scaled and one.gradient_checkpointing and two.gradient_checkpointing
    assert two.blocks_to_swap > one.blocks_to_swap
    with pytest.raises(UserError, match=r"a lower rank, fewer experts or a larger GPU\.$"):
        memory.plan_memory(settings, kind, 2, _Dataset([(832, 480, 81)]), torch.device("cuda"), lambda *_: None,
                           adapters_per_module=4)


@pytest.mark.parametrize("preset,label", [("14b-24gb", "14B"), ("a14b-24gb", "A14B"), ("lowvram-1.3b", "1.3B")])
def test_memory_presets_plan_to_fit_their_limit_at_the_issue_shape(preset, label):
    from tests.train.conftest import REPO as repo_root

    settings = json.loads((repo_root / "presets" / f"{preset}.json").read_text())["settings"]
    assert settings["memory"] == "auto" and get_model_kind(settings["model_kind"]).name == KINDS[label]
    experts = 2 if settings["expert"] == "both" and label == "A14B" else 1
    run = TrainRun(shape(label), TOKENS, resident_experts=experts, rank=settings["network_dim"],
                   optimizer=settings["optimizer_type"], network_copies=experts)
    plan = plan_training(run, budget_bytes(None, settings["memory_limit_gb"]))
    assert plan.fits, plan.reasons


def test_float32_training_counts_four_bytes_per_weight_and_activation():
    half, full = train_run("1.3B"), TrainRun(shape("1.3B"), TOKENS, value_bytes=4)
    choice = TrainChoice(gradient_checkpointing=True)
    half_parts, full_parts = train_parts(half, choice), train_parts(full, choice)
    for part in ("saved activations", "block peak"):
        assert full_parts[part] == 2 * half_parts[part]
    assert full_parts["weights"] > 1.9 * half_parts["weights"]
    assert full_parts["adapters+optimizer"] == half_parts["adapters+optimizer"]

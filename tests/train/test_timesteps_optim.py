import math

import pytest
import torch

from backend.errors import UserError
from backend.train.optim import build_optimizer, build_scheduler, warmup_steps
from backend.train.timesteps import (TimestepSampler, add_noise, flow_target, loss_weights, shift_timesteps,
                                     timestep_range)


def test_flow_matching_interpolation_and_target():
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    t = torch.tensor([0.0, 1.0])
    xt = add_noise(x0, eps, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], eps[1])
    # d x_t / d t = eps - x0: finite difference at t = 0.3
    h = 1e-3
    deriv = (add_noise(x0, eps, torch.full((2,), 0.3 + h)) - add_noise(x0, eps, torch.full((2,), 0.3))) / h
    torch.testing.assert_close(deriv, flow_target(x0, eps), atol=1e-3, rtol=1e-3)


def test_shift_formula_and_monotonic():
    t = torch.linspace(0, 1, 11)
    shifted = shift_timesteps(t, 3.0)
    assert shifted[5].item() == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
    assert torch.all(shifted[1:] >= shifted[:-1]) and shifted[0] == 0 and shifted[-1] == 1


@pytest.mark.parametrize("mode", ["uniform", "sigmoid", "shift", "logsnr"])
def test_samples_stay_in_range(mode):
    sampler = TimestepSampler(mode=mode, lo=0.875, hi=1.0)
    t = sampler.sample(2000, torch.Generator().manual_seed(0))
    assert t.min() >= 0.875 and t.max() <= 1.0


def test_uniform_mean_and_shift_pushes_up():
    g = torch.Generator().manual_seed(0)
    assert TimestepSampler(mode="uniform").sample(20000, g).mean().item() == pytest.approx(0.5, abs=0.01)
    plain = TimestepSampler(mode="sigmoid").sample(20000, torch.Generator().manual_seed(1)).mean()
    shifted = TimestepSampler(mode="shift", discrete_flow_shift=5.0).sample(20000, torch.Generator().manual_seed(1)).mean()
    assert shifted > plain + 0.1


def test_expert_ranges():
    assert timestep_range(0, 1000, "high", 0.875) == (0.875, 1.0)
    assert timestep_range(0, 1000, "low", 0.875) == (0.0, 0.875)
    with pytest.raises(ValueError, match="empty"):
        timestep_range(900, 1000, "low", 0.875)


def test_logit_normal_weight_is_the_density():
    t = torch.tensor([0.5, 0.2])
    w = loss_weights(t, "logit_normal")
    logit = math.log(0.2 / 0.8)
    expected = math.exp(-logit**2 / 2) / (math.sqrt(2 * math.pi) * 0.2 * 0.8)
    assert w[1].item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(loss_weights(t, "none"), torch.ones(2))


def test_warmup_ratio_and_schedules():
    assert warmup_steps(0.1, 200) == 20 and warmup_steps(7, 200) == 7
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer("adamw", [{"params": [p]}], 1e-3, 0.0)
    sched = build_scheduler("cosine", opt, total_steps=10, lr_warmup_steps=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-3) and lrs[-1] < 1e-4


def test_missing_optional_optimizer_is_a_clear_error():
    p = torch.nn.Parameter(torch.zeros(1))
    try:
        import prodigyopt  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install prodigyopt"):
            build_optimizer("prodigy", [{"params": [p]}], 1.0, 0.0)
    else:
        assert build_optimizer("prodigy", [{"params": [p]}], 1.0, 0.0) is not None

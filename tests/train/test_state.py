import pytest
import torch

from backend.errors import UserError
from backend.train.optim import build_optimizer, build_scheduler
from backend.train.state import load_training_state, save_training_state


def _setup(seed):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = build_optimizer("adamw", [{"params": params[:1]}, {"params": params[1:], "lr": 5e-3}], 1e-3, 0.01)
    sched = build_scheduler("cosine", opt, total_steps=20, lr_warmup_steps=2)
    return params, opt, sched


def _steps(params, opt, sched, gen, n):
    for _ in range(n):
        loss = sum((p * torch.randn(p.shape, generator=gen)).sum() for p in params)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_resume_continues_exactly(tmp_path):
    params_a, opt_a, sched_a = _setup(0)
    gen_a = torch.Generator().manual_seed(1)
    _steps(params_a, opt_a, sched_a, gen_a, 6)

    params_b, opt_b, sched_b = _setup(0)
    gen_b = torch.Generator().manual_seed(1)
    _steps(params_b, opt_b, sched_b, gen_b, 3)
    save_training_state(tmp_path / "s-state", optimizer=opt_b, scheduler=sched_b, step=3, epoch=0,
                        data_position={"index": 3}, generators={"noise": gen_b}, fingerprint={"use_rslora": False},
                        extra_tensors={"network.w0": params_b[0].detach().clone(), "network.w1": params_b[1].detach().clone()})

    params_c, opt_c, sched_c = _setup(99)
    gen_c = torch.Generator().manual_seed(123)
    doc = load_training_state(tmp_path / "s-state", optimizer=opt_c, scheduler=sched_c, generators={"noise": gen_c},
                              fingerprint={"use_rslora": False})
    with torch.no_grad():
        params_c[0].copy_(doc["tensors"]["network.w0"])
        params_c[1].copy_(doc["tensors"]["network.w1"])
    assert doc["step"] == 3 and doc["data_position"] == {"index": 3}
    _steps(params_c, opt_c, sched_c, gen_c, 3)
    for a, c in zip(params_a, params_c):
        assert torch.equal(a, c)
    assert opt_a.param_groups[1]["lr"] == opt_c.param_groups[1]["lr"]


def test_resume_refuses_mismatched_setting(tmp_path):
    params, opt, sched = _setup(0)
    save_training_state(tmp_path / "s-state", optimizer=opt, scheduler=sched, step=0, epoch=0, data_position={},
                        generators={}, fingerprint={"use_rslora": True})
    with pytest.raises(UserError, match="use_rslora=True but this run has use_rslora=False"):
        load_training_state(tmp_path / "s-state", optimizer=opt, scheduler=sched, generators={},
                            fingerprint={"use_rslora": False})


def test_not_a_state_folder(tmp_path):
    params, opt, sched = _setup(0)
    with pytest.raises(UserError, match="not a training state folder"):
        load_training_state(tmp_path, optimizer=opt, scheduler=sched, generators={}, fingerprint={})

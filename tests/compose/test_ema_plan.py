"""Before an EMA runs: the runs found in a folder, their checkpoints in step order, the weights shown (closed forms,
and the same numbers the `ema` job writes), the checks of a request, and the summary read back from the output."""
from __future__ import annotations

import shutil

import pytest

from backend.__main__ import main
from backend.compose.ema_plan import (check_request, discover, list_runs, rule_problem, rule_problems, rule_weights,
                                     run_name)
from backend.compose.settings import EmaSettings
from backend.compose.ema_weights import gamma_from_sigma_rel
from backend.compose.summaries import ema_summary
from backend.errors import UserError


@pytest.fixture
def model(kit):
    return kit.make_tiny_wan()


def save_run(kit, model, folder, name, steps, args=(), suffix=""):
    paths = [kit.save_network(kit.make_network(model, args, seed=step), folder / f"{name}-step{step:06d}{suffix}"
                              f".safetensors", args, step=step) for step in steps]
    return paths


def test_list_runs_groups_a_folder(tmp_path, kit, model):
    loras = tmp_path / "loras"
    run = save_run(kit, model, loras, "run", [10, 20, 30])
    shutil.copy(run[-1], loras / "run.safetensors")
    state = loras / "run-step000030-state"
    state.mkdir()
    shutil.copy(run[0], state / "network.safetensors")
    save_run(kit, model, loras, "pair", [5, 10], suffix="-high_noise")
    save_run(kit, model, loras, "pair", [5, 10], suffix="-low_noise")
    save_run(kit, model, loras / "sub", "deep", [1, 2])
    kit.save_network(kit.make_network(model), loras / "alone.safetensors")
    save_run(kit, model, loras, "single", [7])
    assert main(["ema", str(loras / "run-step000010.safetensors"), str(loras / "run-step000020.safetensors"),
                 "--out", str(loras / "run-step000099.safetensors")]) == 0  # an EMA result named like a checkpoint
    runs = list_runs(loras)
    found = {(r.name, r.expert, r.folder.name): [p.name for p in r.files] for r in runs}
    assert found == {
        ("pair", "high", "loras"): ["pair-step000005-high_noise.safetensors", "pair-step000010-high_noise.safetensors"],
        ("pair", "low", "loras"): ["pair-step000005-low_noise.safetensors", "pair-step000010-low_noise.safetensors"],
        ("run", None, "loras"): ["run-step000010.safetensors", "run-step000020.safetensors",
                                 "run-step000030.safetensors", "run.safetensors"],
        ("deep", None, "sub"): ["deep-step000001.safetensors", "deep-step000002.safetensors"]}
    labels = [r.label(tmp_path) for r in runs]
    assert "pair (high-noise expert): 2 files in loras/" in labels and "deep: 2 files in loras/sub/" in labels
    assert run_name([loras / "run-step000010.safetensors"]) == "run" and run_name([loras]) == "loras"
    assert list_runs(tmp_path / "missing") == []


def test_weights_shown_match_closed_forms_and_the_job(tmp_path, kit, model):
    loras = tmp_path / "loras"
    even = save_run(kit, model, loras, "even", [100, 200, 300, 400])
    shutil.copy(even[-1], loras / "even.safetensors")
    found = discover(list_runs(loras)[0].files)
    assert [p.name for p in found.files] == [p.name for p in even] and found.steps == [100, 200, 300, 400]
    assert found.steps_known and found.algo == "lora" and found.delta_space_ok
    assert any("holds the same weights as even-step000400" in note for note in found.notes)
    weights, gamma = rule_weights(_ema(rule="power", sigma_rel=0.2), found.steps)
    assert gamma == pytest.approx(gamma_from_sigma_rel(0.2))
    closed = [(t ** (gamma + 1) - (t - 1) ** (gamma + 1)) / 4 ** (gamma + 1) for t in range(1, 5)]
    assert weights == pytest.approx(closed, abs=1e-12)
    assert rule_weights(_ema(rule="uniform"), found.steps) == ([0.25] * 4, None)
    beta_weights, _ = rule_weights(_ema(rule="beta", beta=0.9), found.steps)
    assert beta_weights == pytest.approx([0.9 ** 3, 0.1 * 0.9 ** 2, 0.1 * 0.9, 0.1])

    uneven = save_run(kit, model, tmp_path / "uneven", "u", [10, 20, 40])
    weights, gamma = rule_weights(_ema(sigma_rel=0.15), discover(uneven).steps)
    cumulative = [0.0] + [(s / 40) ** (gamma + 1) for s in (10, 20, 40)]
    assert weights == pytest.approx([b - a for a, b in zip(cumulative, cumulative[1:])], abs=1e-12)
    out = tmp_path / "u-ema.safetensors"
    request = _ema([tmp_path / "uneven"], out, sigma_rel=0.15, space="delta")
    assert [p.name for p in check_request(request).files] == [p.name for p in uneven]
    assert main(request.arguments()) == 0
    lines = ema_summary(out)
    assert lines[0] == (f"Post-hoc EMA of 3 checkpoints: power EMA, σ_rel 0.15 (γ = {gamma:.4f}), delta space, "
                        f"steps from metadata:")
    assert lines[1:4] == [f"step {s}: weight {w:.6f} (u-step{s:06d}.safetensors)" for s, w in zip((10, 20, 40),
                                                                                                  weights)]
    assert lines[4].startswith("Largest relative truncation error of the re-factorized ΔW: ")
    assert lines[5] == f"Output: {out} ({out.stat().st_size / 1024:.1f} KiB)"


def test_rule_and_request_checks(tmp_path, kit, model):
    run = save_run(kit, model, tmp_path / "run", "r", [1, 2])
    out = tmp_path / "r-ema.safetensors"
    for rule, message in ((dict(sigma_rel=0.3), "between 0 and 1/√12"),
                          (dict(rule="beta", beta=1.2), r"β \(beta\) must be at"),
                          (dict(rule="beta", beta=0.9, beta2=-0.1), r"β2 \(beta2\) must be at")):
        with pytest.raises(UserError, match=message):
            check_request(_ema(run, out, **rule))
    with pytest.raises(UserError, match="No checkpoints are chosen"):
        check_request(_ema([], out))
    with pytest.raises(UserError, match="at least two different checkpoints; found 1"):
        check_request(_ema(run[:1], out))
    dora = save_run(kit, model, tmp_path / "dora", "d", [1, 2], args=["use_dora=True"])
    with pytest.raises(UserError, match="checkpoints are dora: .* choose the factors space"):
        check_request(_ema(dora, out, space="delta"))
    out.write_bytes(b"earlier")
    with pytest.raises(UserError, match="already exists"):
        check_request(_ema(run, out))
    assert out.read_bytes() == b"earlier"
    with pytest.raises(UserError, match="is one of the inputs"):
        check_request(_ema(run, run[0], overwrite=True))
    beta = _ema(run, out, rule="beta", beta=0.9, beta2=0.8, sigma_rel=0.1).arguments()
    assert "--beta=0.9" in beta and "--beta2=0.8" in beta and not any("sigma_rel" in arg for arg in beta)
    uniform = _ema(run, out, rule="uniform", beta2=0.8).arguments()
    assert "--rule=uniform" in uniform and not any(arg.startswith(("--sigma", "--beta")) for arg in uniform)


def test_an_empty_or_out_of_range_value_of_the_chosen_rule_is_one_sentence():
    assert rule_problem("power", None, None, None) == ("σ_rel is empty; type the EMA width, e.g. 0.2 (typical "
                                                       "values are 0.05-0.25).")
    assert rule_problem("beta", 0.2, None, None).startswith("β is empty; type the decay at the second checkpoint")
    assert "between 0 and 1/√12" in rule_problem("power", 0.5, None, None)
    assert rule_problem("beta", 0.5, 0.9, None) is None  # σ_rel belongs to the power rule, not looked at
    assert rule_problem("uniform", None, None, None) is None
    assert rule_problem("median", 0.2, None, None) == "Unknown averaging rule `median`; use power, beta or uniform."
    both = rule_problems("beta", 0.2, 1.5, -1.0)  # each wrong value at its own field
    assert both == {"beta": "β (beta) must be at least 0 and below 1, got 1.5; e.g. 0.95.",
                    "beta2": "β2 (beta2) must be at least 0 and below 1, got -1.0; e.g. 0.95."}


def _ema(inputs=("unused",), out="unused.safetensors", **values) -> EmaSettings:
    return EmaSettings(inputs=[str(p) for p in inputs], out=str(out), **values)

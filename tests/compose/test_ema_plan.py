"""Before an EMA runs: the runs found in a folder, their checkpoints in step order, the weights shown (closed forms,
and the same numbers the `ema` job writes), the checks of a request, and the summary read back from the output."""
from __future__ import annotations

import shutil

import pytest

from backend.__main__ import main
from backend.compose.ema_plan import EmaRequest, Rule, discover, list_runs, run_name
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
    weights, gamma = Rule("power", 0.2).weights(found.steps)
    assert gamma == pytest.approx(gamma_from_sigma_rel(0.2))
    closed = [(t ** (gamma + 1) - (t - 1) ** (gamma + 1)) / 4 ** (gamma + 1) for t in range(1, 5)]
    assert weights == pytest.approx(closed, abs=1e-12)
    assert Rule("uniform").weights(found.steps) == ([0.25] * 4, None)
    beta_weights, _ = Rule("beta", None, 0.9).weights(found.steps)
    assert beta_weights == pytest.approx([0.9 ** 3, 0.1 * 0.9 ** 2, 0.1 * 0.9, 0.1])

    uneven = save_run(kit, model, tmp_path / "uneven", "u", [10, 20, 40])
    weights, gamma = Rule("power", 0.15).weights(discover(uneven).steps)
    cumulative = [0.0] + [(s / 40) ** (gamma + 1) for s in (10, 20, 40)]
    assert weights == pytest.approx([b - a for a, b in zip(cumulative, cumulative[1:])], abs=1e-12)
    out = tmp_path / "u-ema.safetensors"
    request = EmaRequest([tmp_path / "uneven"], out, Rule("power", 0.15), space="delta")
    assert [p.name for p in request.check().files] == [p.name for p in uneven]
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
    for rule, message in ((Rule("power", 0.3), "between 0 and 1/√12"), (Rule("power", None), "σ_rel is empty"),
                          (Rule("beta", None, None), "β is empty"), (Rule("beta", None, 1.2), r"β \(beta\) must be at"),
                          (Rule("median"), "Unknown averaging rule `median`")):
        with pytest.raises(UserError, match=message):
            EmaRequest(run, out, rule).check()
    with pytest.raises(UserError, match="No checkpoints are chosen"):
        EmaRequest([], out, Rule()).check()
    with pytest.raises(UserError, match="at least two different checkpoints; found 1"):
        EmaRequest(run[:1], out, Rule()).check()
    dora = save_run(kit, model, tmp_path / "dora", "d", [1, 2], args=["use_dora=True"])
    with pytest.raises(UserError, match="checkpoints are dora: .* choose the factors space"):
        EmaRequest(dora, out, Rule(), space="delta").check()
    out.write_bytes(b"earlier")
    with pytest.raises(UserError, match="already exists"):
        EmaRequest(run, out, Rule()).check()
    assert out.read_bytes() == b"earlier"
    with pytest.raises(UserError, match="is one of the inputs"):
        EmaRequest(run, run[0], Rule(), overwrite=True).check()
    assert EmaRequest(run, out, Rule("beta", None, 0.9, 0.8)).arguments()[-4:] == ["--beta", "0.9", "--beta2", "0.8"]
    assert EmaRequest(run, out, Rule("uniform")).arguments()[-1] == "--uniform"

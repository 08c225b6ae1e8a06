"""`--config PRESET.json` on merge, merge-loras and ema: a preset saved as the tabs save it runs from the command
line and writes the same file as the same settings given as flags; a flag beside it wins; a preset of another job
type or a broken one is one sentence and nothing is written."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from backend.__main__ import main
from backend.adapters.formats import load_lora
from backend.compose.settings import EmaSettings, MergeLorasSettings, MergeSettings
from backend.config.presets import job_presets
from backend.models.loading import save_transformer_original
from tests.compose.test_ema import _save as save_checkpoint

KEY = "lora_unet_blocks_0_self_attn_q.lora_up.weight"
SECOND_HALF = [r"exclude_patterns=['blocks\.[01]\..*']"]


def two_loras(tmp_path, kit):
    model = kit.make_tiny_wan()
    base = save_transformer_original(model, tmp_path / "base.safetensors")
    first = kit.save_network(kit.make_network(model, seed=1), tmp_path / "a.safetensors")
    second = kit.save_network(kit.make_network(model, SECOND_HALF, seed=2), tmp_path / "b.safetensors", SECOND_HALF)
    return base, [str(first), str(second)]


def saved(workspace, job_type: str, settings) -> str:
    """The preset file the tab's Save writes for `settings`."""
    return str(job_presets(workspace / "presets", job_type).save("mine", settings).path)


def assert_same_tensors(path_a, path_b) -> None:
    a, b = load_file(path_a), load_file(path_b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_merge_preset_runs_as_its_flags_do_and_a_flag_beside_it_wins(tmp_path, kit):
    base, loras = two_loras(tmp_path, kit)
    preset = saved(tmp_path, "merge", MergeSettings(dit=str(base), lora=loras, multiplier=[1.0, 0.7],
                                                    out=str(tmp_path / "from-preset.safetensors"),
                                                    allow_overlap=True, dtype="fp32"))
    assert main(["merge", "--config", preset]) == 0
    flags = tmp_path / "from-flags.safetensors"
    assert main(["merge", "--dit", str(base), "--lora", *loras, "--multiplier", "1.0", "0.7", "--out", str(flags),
                 "--allow_overlap", "--dtype", "fp32"]) == 0
    assert_same_tensors(tmp_path / "from-preset.safetensors", flags)
    other = tmp_path / "other.safetensors"
    assert main(["merge", "--config", preset, "--multiplier", "1.0", "0.2", "--out", str(other)]) == 0
    assert not torch.equal(load_file(other)["blocks.3.ffn.0.weight"], load_file(flags)["blocks.3.ffn.0.weight"])
    assert torch.equal(load_file(other)["blocks.0.ffn.0.weight"], load_file(flags)["blocks.0.ffn.0.weight"])


def test_a_merge_loras_preset_runs_as_its_flags_do(tmp_path, kit):
    _, loras = two_loras(tmp_path, kit)
    preset = saved(tmp_path, "merge-loras", MergeLorasSettings(lora=loras, multiplier=[0.5, 1.0], allow_overlap=True,
                                                               out=str(tmp_path / "from-preset.safetensors")))
    assert main(["merge-loras", "--config", preset]) == 0
    flags = tmp_path / "from-flags.safetensors"
    assert main(["merge-loras", "--lora", *loras, "--multiplier", "0.5", "1.0", "--allow_overlap",
                 "--out", str(flags)]) == 0
    assert_same_tensors(tmp_path / "from-preset.safetensors", flags)


def test_an_ema_preset_gives_its_rule_and_checkpoints_and_the_command_line_adds_the_output(tmp_path):
    run = tmp_path / "run"
    files = [str(save_checkpoint(run / f"lora-step{step:06d}.safetensors", seed=i, step=step))
             for i, step in enumerate([100, 300, 1000])]
    preset = saved(tmp_path, "ema", EmaSettings(inputs=files, out="", rule="power", sigma_rel=0.1))
    from_preset = tmp_path / "from-preset.safetensors"
    assert main(["ema", "--config", preset, "--out", str(from_preset)]) == 0
    flags = tmp_path / "from-flags.safetensors"
    assert main(["ema", *files, "--sigma_rel", "0.1", "--out", str(flags)]) == 0
    assert_same_tensors(from_preset, flags)
    assert load_lora(from_preset).metadata["loraid_studio.ema"] == load_lora(flags).metadata["loraid_studio.ema"]
    beta = tmp_path / "beta.safetensors"  # a rule on the command line replaces the preset's rule and its values
    assert main(["ema", "--config", preset, "--beta", "0.9", "--out", str(beta)]) == 0
    beta_flags = tmp_path / "beta-flags.safetensors"
    assert main(["ema", *files, "--beta", "0.9", "--out", str(beta_flags)]) == 0
    assert_same_tensors(beta, beta_flags)
    assert not torch.equal(load_file(beta)[KEY], load_file(flags)[KEY])


def test_a_preset_of_another_job_type_or_a_broken_one_is_one_sentence(tmp_path, kit, capsys):
    _, loras = two_loras(tmp_path, kit)
    out = tmp_path / "never.safetensors"
    preset = saved(tmp_path, "merge-loras", MergeLorasSettings(lora=loras, out=str(out)))
    assert main(["ema", "--config", preset]) == 2
    assert capsys.readouterr().err == ("error: mine.json is a `merge-loras` preset, not an `ema` one; load it in the "
                                       "tab it belongs to.\n")
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    assert main(["merge-loras", "--config", str(broken)]) == 2
    assert capsys.readouterr().err.startswith("error: broken.json is not valid JSON")
    assert not out.exists()

"""The run TOML, our command, and the musubi-tuner equivalent rendered from one TrainSettings."""
from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from backend.train.__main__ import parse
from backend.train.command import (musubi_command, run_toml, shell_quote, shown_command, train_argv,
                                   write_run_config)
from backend.train.run_events import RunProgress
from backend.train.settings import TrainSettings
from backend.workspace import Workspace


def test_run_file_is_what_the_trainer_reads_and_never_overwritten(tmp_path):
    workspace = Workspace(tmp_path)
    settings = TrainSettings(network_type="dora", network_args=["use_rslora=True"], loraid=2, save_state=True,
                             dataset_config="datasets/demo/concept_a/dataset.toml", output_name="run")
    first = write_run_config(settings, workspace, now=0)
    second = write_run_config(settings, workspace, now=0)
    assert first != second and first.parent == second.parent == tmp_path / "runs"
    assert first.read_text() == run_toml(settings)
    parsed, parsed_workspace = parse(["--config", str(first), "--workspace", str(tmp_path)])
    assert parsed == settings and parsed_workspace.root == workspace.root


def test_job_argv_and_the_command_shown(tmp_path):
    workspace = Workspace(tmp_path)
    config = tmp_path / "runs" / "a b.toml"
    assert train_argv(config, workspace) == [sys.executable, "-m", "backend.train", "--config", str(config),
                                             "--workspace", str(tmp_path)]
    multi = train_argv(config, workspace, num_processes=2)
    assert multi[1:9] == ["-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
                          "--multi_gpu", "-m"]
    shown = shown_command(config, workspace)
    assert shlex.split(shown) == ["accelerate", "launch", "--num_processes", "1", "-m", "backend.train", "--config",
                                  str(config), "--workspace", str(tmp_path)]


def test_machines_and_fsdp_reach_accelerate_launch(tmp_path):
    from backend.train.settings import TrainSettings

    workspace = Workspace(tmp_path)
    config = tmp_path / "runs" / "r.toml"
    settings = TrainSettings(num_machines=2, machine_rank=1, main_process_ip="10.0.0.5", main_process_port=29600)
    argv = train_argv(config, workspace, num_processes=4, settings=settings)
    found = options(argv)
    assert found["--num_processes"] == ["8"] and found["--num_machines"] == ["2"]  # accelerate counts every process
    assert found["--machine_rank"] == ["1"] and found["--main_process_ip"] == ["10.0.0.5"]
    assert found["--main_process_port"] == ["29600"] and "--multi_gpu" in found
    fsdp = options(train_argv(config, workspace, 2, settings=TrainSettings(distributed="fsdp")))
    assert "--use_fsdp" in fsdp and "--multi_gpu" not in fsdp
    assert fsdp["--fsdp_transformer_layer_cls_to_wrap"] == ["WanTransformerBlock"]
    assert "--machine_rank 1" in shown_command(config, workspace, 4, settings)
    with pytest.raises(ValueError, match="main_process_ip"):
        TrainSettings(num_machines=2)
    with pytest.raises(ValueError, match="machine_rank"):
        TrainSettings(num_machines=2, machine_rank=2, main_process_ip="10.0.0.5")


def options(argv: list[str]) -> dict[str, list[str]]:
    found, current = {}, None
    for arg in argv:
        if arg.startswith("--"):
            current = arg
            found[current] = []
        elif current:
            found[current].append(arg)
    return found


def test_musubi_command_carries_every_option_it_has(tmp_path):
    workspace = Workspace(tmp_path)
    settings = TrainSettings(model_kind="wan2.1-t2v-14b", dit="/m/wan14b.safetensors", vae="/m/vae.safetensors",
                             text_encoder="/m/t5.pth", dataset_config="data/set.toml", network_type="dora",
                             network_args=["loraplus_lr_ratio=8.0"], loraid=3, optimizer_type="prodigy",
                             weight_decay=0.05, fp8_base=False, gradient_checkpointing=True, attn_mode="flash",
                             mixed_precision="bf16", save_state=True, save_every_n_epochs=2, save_last_n_epochs=3,
                             max_train_epochs=10, logging_dir="logs", min_timestep=100, blocks_to_swap=20,
                             offload_activations=True)
    command = musubi_command(settings, workspace)
    found = options(command.argv)
    assert found["--task"] == ["t2v-14B"] and found["--dit"] == ["/m/wan14b.safetensors"]
    assert found["--vae"] == ["/m/vae.safetensors"] and found["--t5"] == ["/m/t5.pth"]
    assert found["--dataset_config"] == [str(tmp_path / "data" / "set.toml")]  # absolute: musubi has no workspace
    assert found["--network_module"] == ["networks.lora_wan"] and "--flash_attn" in found
    assert found["--optimizer_type"] == ["prodigyopt.Prodigy"] and found["--optimizer_args"] == ["weight_decay=0.05"]
    assert found["--network_args"] == ["use_dora=True", "loraplus_lr_ratio=8.0", "exclude_patterns=['.*']",
                                       r"include_patterns=[r'blocks\.(10|11|12|13|14)\..*']"]
    assert found["--save_last_n_epochs"] == ["3"] and found["--max_train_epochs"] == ["10"]
    assert found["--min_timestep"] == ["100"] and found["--logging_dir"] == [str(tmp_path / "logs")]
    assert "--gradient_checkpointing" in found and "--save_state" in found and "--fp8_base" not in found
    assert found["--blocks_to_swap"] == ["20"] and "--gradient_checkpointing_cpu_offload" in found
    assert any("LORAID 3" in note for note in command.notes) and any("DoRA" in note for note in command.notes)
    assert any("convert FILE OUT.safetensors --to lora --rank R --base DIT" in note for note in command.notes)


def test_musubi_a14b_single_expert_keeps_its_timestep_range(tmp_path):
    settings = TrainSettings(model_kind="wan2.2-t2v-a14b", expert="high", dit_high_noise="/m/high.safetensors")
    found = options(musubi_command(settings, Workspace(tmp_path)).argv)
    assert found["--dit"] == ["/m/high.safetensors"] and found["--timestep_boundary"] == ["875"]
    assert (found["--min_timestep"], found["--max_timestep"]) == (["875"], ["1000"])
    both = options(musubi_command(settings.with_overrides({"expert": "both", "dit": "/m/low.safetensors"}),
                                  Workspace(tmp_path)).argv)
    assert both["--dit"] == ["/m/low.safetensors"] and both["--dit_high_noise"] == ["/m/high.safetensors"]
    assert "--min_timestep" not in both


def test_the_printed_musubi_command_is_one_bash_command_with_the_same_arguments(tmp_path):
    settings = TrainSettings(loraid=1, network_args=["exclude_mod=False"], output_name="it's mine")
    command = musubi_command(settings, Workspace(tmp_path))
    echoed = subprocess.run(["bash", "-c", 'printf "%s\\n" ' + command.text()], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert echoed == command.argv
    assert shell_quote(r"include_patterns=[r'blocks\.(0|1)\..*']") == r'''"include_patterns=[r'blocks\.(0|1)\..*']"'''


def test_run_progress_folds_events():
    progress = RunProgress()
    progress.apply([{"event": "start", "total": 6, "step": 3},
                    {"event": "step", "step": 4, "total": 6, "loss": 0.5, "avg_loss": 0.6, "lr": 1e-3, "it_s": 2.0,
                     "eta_s": 1.0, "vram": 2**30},
                    {"event": "checkpoint", "path": "/l/a-step000004.safetensors", "step": 4},
                    {"event": "checkpoint", "path": "/l/a-step000004-state", "step": 4, "kind": "state"},
                    {"event": "sample", "path": "/o/s.png", "step": 4, "prompt": "a red ball"},
                    {"event": "warning", "message": "careful"}])
    assert progress.loss_rows() == [{"step": 4, "value": 0.5, "series": "loss"},
                                    {"step": 4, "value": 0.6, "series": "avg_loss"}]
    assert progress.lr_rows() == [{"step": 4, "lr": 1e-3}] and progress.latest_state == "/l/a-step000004-state"
    assert progress.samples == [("/o/s.png", "step 4: a red ball")] and progress.warnings == ["careful"]
    assert progress.summary() == ("step 4/6 (67%) · resumed at step 3 · 2.00 it/s · ETA 0:01 · VRAM 1.00 GiB · "
                                  "loss 0.5000")
    progress.apply([{"event": "end", "status": "stopped", "step": 4}])
    assert progress.status == "stopped" and "ETA" not in progress.summary()


def test_musubi_command_of_a_ti2v_run_says_musubi_cannot_train_it(tmp_path):
    from backend.train.command import musubi_command
    from backend.train.settings import TrainSettings

    for kind in ("wan2.2-ti2v-5b", "demo-ti2v"):
        settings = TrainSettings(model_kind=kind, dit="/m/ti2v5b.safetensors", ti2v_mode="i2v")
        command = musubi_command(settings, None)
        assert command.argv[command.argv.index("--task") + 1] == "ti2v-5B"
        assert any("musubi-tuner does not train Wan2.2 TI2V-5B" in note and "ti2v_mode=i2v" in note
                   for note in command.notes)

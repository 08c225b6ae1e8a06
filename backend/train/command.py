"""What "Show command" and "Start" run: the run TOML, our trainer's command line, and the musubi-tuner equivalent.

Our run: `accelerate launch --num_processes N -m backend.train --config run.toml --workspace W`. With one process
the job runs the same module as `python -m backend.train ...` (accelerate then prepares a single process in-place,
the same training); with more it goes through `python -m accelerate.commands.launch` so no `accelerate` script
needs to be on PATH.

musubi-tuner has no workspace: its command gets absolute paths, the LORAID slice as include/exclude patterns (works
on stock musubi; the seed's fork also takes `--LORAID n`) and the notes list what does not carry over (the demo
models, our diffusers-folder VAE / text encoder, options musubi lacks).
"""
from __future__ import annotations

import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from backend.config.network_builder import musubi_network_args, network_module
from backend.errors import UserError
from backend.fileio import atomic_write_text
from backend.models.registry import get_model_kind
from backend.train.networks import ExpertPlan, loraid_allocation
from backend.train.paths import resolve_settings
from backend.train.timesteps import timestep_range
from backend.workspace import Workspace

RUNS_FOLDER = "runs"  # <workspace>/runs/<stamp>-<output_name>.toml: the exact settings of every started run
MUSUBI_TASKS = {"wan2.1-t2v-1.3b": "t2v-1.3B", "wan2.1-t2v-14b": "t2v-14B", "wan2.1-i2v-14b": "i2v-14B",
                "wan2.2-t2v-a14b": "t2v-A14B", "wan2.2-i2v-a14b": "i2v-A14B", "wan2.2-ti2v-5b": "ti2v-5B",
                "demo-t2v": "t2v-1.3B", "demo-a14b": "t2v-A14B", "demo-ti2v": "ti2v-5B"}
MUSUBI_OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "adafactor": "adafactor",
                     "prodigy": "prodigyopt.Prodigy"}
MUSUBI_ATTENTION = {"auto": "--sdpa", "sdpa": "--sdpa", "flash": "--flash_attn", "sage": "--sage_attn"}
SAME_NAME_OPTIONS = ("learning_rate", "max_grad_norm", "gradient_accumulation_steps", "lr_scheduler",
                     "lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power", "network_dim",
                     "network_alpha", "seed", "timestep_sampling", "discrete_flow_shift", "sigmoid_scale",
                     "logit_mean", "logit_std", "weighting_scheme", "output_name")
OPTIONAL_SAME_NAME = ("max_train_epochs", "save_every_n_steps", "save_every_n_epochs", "save_last_n_steps",
                      "save_last_n_epochs", "sample_every_n_steps", "sample_every_n_epochs")
PATH_OPTIONS = ("network_weights", "resume", "sample_prompts", "logging_dir")
FLAG_OPTIONS = ("gradient_checkpointing", "fp8_base", "save_state")


def run_toml(settings) -> str:
    """The run file: every setting (empty optional ones left out), readable by `--config`."""
    header = (f"# LORAID Studio training run (TrainSettings schema {settings.SCHEMA_VERSION}).\n"
              "# Relative paths and {workspace} are taken against --workspace.\n")
    return header + settings.to_toml()


def write_run_config(settings, workspace: Workspace, now: float | None = None) -> Path:
    """Write `<workspace>/runs/<stamp>-<output_name>[-n].toml` atomically; never replaces an earlier run's file."""
    folder = workspace.root / RUNS_FOLDER
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    path = folder / f"{stamp}-{settings.output_name}.toml"
    counter = 1
    while path.exists():
        counter += 1
        path = folder / f"{stamp}-{settings.output_name}-{counter}.toml"
    atomic_write_text(path, run_toml(settings))
    return path


FSDP_ARGS = ("--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
             "--fsdp_transformer_layer_cls_to_wrap", "WanTransformerBlock", "--fsdp_use_orig_params", "true",
             "--fsdp_sync_module_states", "true", "--fsdp_state_dict_type", "FULL_STATE_DICT")


def launch_args(settings, num_processes: int) -> list[str]:
    """accelerate launch options: processes per machine × machines (accelerate counts them all), this machine's
    place, and DDP (`--multi_gpu`) or FSDP. Empty for a single process on a single machine."""
    machines = settings.num_machines if settings is not None else 1
    if num_processes <= 1 and machines <= 1:
        return []
    args = ["--num_processes", str(num_processes * machines), "--num_machines", str(machines)]
    if machines > 1:
        args += ["--machine_rank", str(settings.machine_rank), "--main_process_ip", settings.main_process_ip,
                 "--main_process_port", str(settings.main_process_port)]
    if settings is not None and settings.distributed == "fsdp":
        return args + list(FSDP_ARGS)
    return args + ["--multi_gpu"]


def train_argv(config: Path, workspace: Workspace, num_processes: int = 1, python: str = sys.executable,
               settings=None) -> list[str]:
    """The job's command (a list, never a shell string); `settings` adds its machines and DDP / FSDP choice."""
    tail = ["-m", "backend.train", "--config", str(config), "--workspace", str(workspace.root)]
    extra = launch_args(settings, num_processes)
    if not extra:
        return [python, *tail]
    return [python, "-m", "accelerate.commands.launch", *extra, *tail]


def shown_command(config: Path | str, workspace: Workspace, num_processes: int = 1, settings=None) -> str:
    """What a user types in a terminal for the same run."""
    extra = launch_args(settings, num_processes) or ["--num_processes", str(num_processes)]
    return shlex.join(["accelerate", "launch", *extra, "-m", "backend.train", "--config", str(config),
                       "--workspace", str(workspace.root)])


@dataclass
class MusubiCommand:
    argv: list[str]
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """One argument (with its values) per line, joined by ` \\` so bash takes it as one command."""
        lines, current = [], []
        for arg in self.argv:
            if (arg.startswith("--") or arg.endswith(".py")) and current:
                lines.append(" ".join(current))
                current = []
            current.append(shell_quote(arg))
        lines.append(" ".join(current))
        return " \\\n    ".join(lines)


def shell_quote(arg: str) -> str:
    """As-is when safe; else in double quotes when bash keeps it unchanged there (regex backslashes like `\\.`
    survive), which reads like musubi's own docs; else shlex's single quotes."""
    if shlex.quote(arg) == arg:
        return arg
    if not any(char in arg for char in '"$`!') and not re.search(r'\\([\\"$`]|$)', arg):
        return f'"{arg}"'
    return shlex.quote(arg)


def _musubi_dataset_config(path: str | None, notes: list[str]) -> str:
    """The dataset TOML musubi-tuner reads: a `.musubi.toml` copy with absolute paths when the file has relative
    ones (musubi resolves them against its working directory); the file itself when it cannot be read yet."""
    from backend.data.dataset_toml_file import export_for_musubi

    if not path:
        return "<dataset.toml>"
    try:
        exported, note = export_for_musubi(Path(path))
    except (UserError, OSError):
        return path  # the form check reports what is wrong with the file
    if note:
        notes.append(note)
    return str(exported)


def musubi_command(settings, workspace: Workspace | None) -> MusubiCommand:
    """The equivalent `accelerate launch ... wan_train_network.py` command for musubi-tuner."""
    kind = get_model_kind(settings.model_kind)
    s = resolve_settings(settings, workspace)
    notes: list[str] = []
    argv = ["accelerate", "launch", "--num_cpu_threads_per_process", "1", "--mixed_precision",
            s.mixed_precision, "src/musubi_tuner/wan_train_network.py", "--task", MUSUBI_TASKS[kind.name]]
    if kind.name.startswith("demo-"):
        notes.append(f"The {kind.label} is this app's tiny test model; musubi-tuner cannot load it. Point --dit at "
                     f"a real {MUSUBI_TASKS[kind.name]} checkpoint.")
    if kind.task == "ti2v":
        notes.append("musubi-tuner does not train Wan2.2 TI2V-5B (its 48-channel Wan2.2 VAE latents and per-token "
                     f"timesteps); ti2v_mode={s.ti2v_mode} has no musubi-tuner flag.")
    argv += _model_args(s, kind, notes)
    argv += ["--dataset_config", _musubi_dataset_config(s.dataset_config, notes)]
    argv += [MUSUBI_ATTENTION[s.attn_mode], "--mixed_precision", s.mixed_precision]
    argv += [f"--{name}" for name in FLAG_OPTIONS if getattr(s, name)]
    if s.fp8_scaled:  # musubi-tuner's scaled fp8 is `--fp8_base --fp8_scaled`
        argv += ["--fp8_scaled"] if s.fp8_base else ["--fp8_base", "--fp8_scaled"]
    if s.blocks_to_swap:
        argv += ["--blocks_to_swap", str(s.blocks_to_swap)]
    if s.offload_activations:  # musubi-tuner's name for the same thing
        argv += ["--gradient_checkpointing_cpu_offload"]
    argv += ["--optimizer_type", MUSUBI_OPTIMIZERS[s.optimizer_type], "--optimizer_args",
             f"weight_decay={s.weight_decay:g}"]
    argv += ["--network_module", network_module(s.network_type)]
    for name in SAME_NAME_OPTIONS:
        argv += [f"--{name}", _number(getattr(s, name))]
    network_args = musubi_network_args(s.network_type, list(s.network_args), _allocation(s, kind))
    if network_args:
        argv += ["--network_args", *network_args]
    if s.loraid is not None:
        notes.append(f"LORAID {s.loraid} is given as include/exclude patterns (stock musubi-tuner); the seed's fork "
                     f"also accepts --LORAID {s.loraid}.")
    if s.network_type == "dora":
        notes.append("use_dora=True is read by blissful-tuner's networks.lora_wan; stock musubi-tuner has no DoRA "
                     "and drops dora_scale: for musubi, turn the trained file into a plain LoRA with `python -m "
                     "backend convert FILE OUT.safetensors --to lora --rank R --base DIT`.")
    if s.network_type in ("locon", "loha", "lokr"):
        notes.append(f"{s.network_type} goes through LyCORIS (`pip install lycoris-lora`).")
    if s.network_type in ("loha", "lokr"):
        notes.append(f"musubi-tuner's own loaders read no {s.network_type} tensors: `python -m backend convert FILE "
                     f"OUT.safetensors --to lora --rank R` writes a plain LoRA they load.")
    argv += ["--max_train_steps", str(s.max_train_steps)]
    argv += [arg for name in OPTIONAL_SAME_NAME if getattr(s, name) is not None
             for arg in (f"--{name}", str(getattr(s, name)))]
    for name in PATH_OPTIONS:
        if getattr(s, name):
            argv += [f"--{name}", getattr(s, name)]
    argv += ["--output_dir", s.output_dir or (str(workspace.loras) if workspace else "<output folder>")]
    if s.gradient_checkpointing and s.uncheckpointed_blocks:
        notes.append(f"uncheckpointed_blocks={s.uncheckpointed_blocks} has no musubi-tuner flag: there every block is "
                     f"checkpointed (slower, less memory).")
    if s.compile == "on":
        notes.append("compile (torch.compile of the blocks) has no musubi-tuner flag here; it is left out.")
    if s.save_precision != "fp32":
        notes.append(f"save_precision={s.save_precision}: musubi-tuner saves in its own dtype; convert afterwards.")
    low, high = _timestep_bounds(s, kind)
    if (low, high) != (0, 1000):
        argv += ["--min_timestep", str(low), "--max_timestep", str(high)]
    return MusubiCommand(argv, notes)


def _timestep_bounds(s, kind) -> tuple[int, int]:
    """min/max timestep as our trainer applies them (one A14B expert: clipped to its side of the boundary)."""
    plan = ExpertPlan.from_settings(s, kind)
    if not kind.has_experts or s.expert == "both":
        return s.min_timestep, s.max_timestep
    try:
        low, high = timestep_range(s.min_timestep, s.max_timestep, s.expert, plan.boundary)
    except ValueError:
        return s.min_timestep, s.max_timestep
    return round(low * 1000), round(high * 1000)


def _model_args(s, kind, notes: list[str]) -> list[str]:
    args = []
    if kind.has_experts:
        plan = ExpertPlan.from_settings(s, kind)
        boundary = round(plan.boundary * 1000)
        low, high = s.dit or "<low-noise expert .safetensors>", s.dit_high_noise or "<high-noise expert .safetensors>"
        if s.expert == "both":
            args += ["--dit", low, "--dit_high_noise", high]
        elif s.expert == "high":
            args += ["--dit", high]
        else:
            args += ["--dit", low]
        args += ["--timestep_boundary", str(boundary)]
    else:
        args += ["--dit", s.dit or "<transformer .safetensors>"]
    args += ["--vae", s.vae if s.vae.endswith((".safetensors", ".pth")) else "<wan_2.1_vae.safetensors>",
             "--t5", s.text_encoder if s.text_encoder.endswith((".safetensors", ".pth"))
             else "<models_t5_umt5-xxl-enc-bf16.pth>"]
    if not (s.vae.endswith((".safetensors", ".pth")) and s.text_encoder.endswith((".safetensors", ".pth"))):
        notes.append("musubi-tuner reads the original Wan VAE and T5 files, not diffusers folders; fill in --vae "
                     "and --t5.")
    return args


def _allocation(s, kind):
    return loraid_allocation(s, kind, ExpertPlan.from_settings(s, kind))


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)

"""Every training option, declared once. The Train tab, presets, run TOML files and `--name value` overrides all
come from this model. Names follow musubi-tuner where its users know them; defaults are chosen for Wan LoRA
training (not musubi's alpha 1 / lr 2e-6)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator, model_validator

from backend.config.settings import Settings, setting

MODEL_KINDS = ["demo-t2v", "demo-a14b", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b",
               "wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b", "demo-ti2v"]
ALGOS = ["lora", "dora", "locon", "loha", "lokr"]
OPTIMIZERS = ["adamw", "adamw8bit", "adafactor", "prodigy"]
SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
TIMESTEP_SAMPLING = ["uniform", "sigmoid", "shift", "logsnr"]


class TrainSettings(Settings):
    """Schema history of presets: version 1 had one `save_last_n` for step and epoch checkpoints alike; version 2
    splits it into musubi-tuner's `save_last_n_steps` / `save_last_n_epochs` (a v1 value is kept for both)."""

    SCHEMA_VERSION: ClassVar[int] = 2

    # -- model
    model_kind: Literal[tuple(MODEL_KINDS)] = setting(
        "demo-t2v", label="Model", group="Model", choices=MODEL_KINDS,
        help="Which Wan architecture the checkpoint is. The demo models live in the workspace.")
    dit: str = setting("", label="DiT checkpoint", group="Model",
                       help="Single-file .safetensors (original or ComfyUI names) or a diffusers folder. "
                            "Empty: the workspace's demo model. For A14B, this is the low-noise expert.")
    dit_high_noise: str = setting("", label="DiT high-noise expert", group="Model",
                                  help="Wan2.2 A14B only: the high-noise expert checkpoint.")
    expert: Literal["high", "low", "both"] = setting(
        "low", label="Expert (A14B)", group="Model", choices=["high", "low", "both"],
        help="Wan2.2 A14B: train the high-noise expert, the low-noise one, or both (one LoRA file per expert).")
    timestep_boundary: float | None = setting(
        None, label="Expert boundary", group="Model", ge=0.0, le=1.0,
        help="A14B: timesteps above this fraction go to the high-noise expert. Empty: 0.875 (T2V) / 0.900 (I2V).")
    ti2v_mode: Literal["t2v", "i2v"] = setting(
        "t2v", label="TI2V task", group="Model", choices=["t2v", "i2v"],
        help="Wan2.2 TI2V-5B: t2v trains text-to-video; i2v trains image-to-video (the first latent frame stays "
             "clean with timestep 0 on its tokens, the loss covers the other frames; needs clips of 5+ frames).")
    vae: str = setting("", label="VAE", group="Model",
                       help="AutoencoderKLWan folder (the Wan2.2 VAE for TI2V-5B). Empty: the workspace's demo VAE.")
    text_encoder: str = setting("", label="Text encoder", group="Model",
                                help="UMT5 encoder folder. Empty: the workspace's demo encoder.")
    # -- data
    dataset_config: str = setting("", label="Dataset TOML", group="Dataset",
                                  help="musubi-tuner dataset config ([general] + [[datasets]]). Caches must exist.")
    max_data_loader_n_workers: int = setting(2, label="Data loader workers", group="Dataset", ge=0, le=64,
                                             help="Processes per training process that load cached batches ahead "
                                                  "of use (0: load in the training process).")
    # -- network
    network_type: Literal[tuple(ALGOS)] = setting("lora", label="Network type", group="Network", choices=ALGOS,
                                                  help="Adapter algorithm. DoRA = LoRA + per-row magnitude.")
    network_dim: int = setting(32, label="Rank (network_dim)", group="Network", ge=1, le=4096,
                               help="LoRA rank r.")
    network_alpha: float = setting(16.0, label="Alpha (network_alpha)", group="Network", ge=0.0,
                                   help="Scale is alpha / rank (alpha / sqrt(rank) with use_rslora).")
    network_args: list[str] = setting([], label="network_args", group="Network",
                                      help="musubi-style key=value options, e.g. use_rslora=True, conv_dim=8.")
    network_weights: str = setting("", label="Initial weights", group="Network",
                                   help="Start from an existing LoRA file of the same layout.")
    loraid: int | None = setting(None, label="LORAID", group="Network", ge=1,
                                 help="Train only the blocks this LORAID owns. Empty: all blocks.")
    blocks_per_loraid: int | None = setting(None, label="Blocks per LORAID", group="Network", ge=1,
                                            help="Size of each LORAID slice. Empty: the LORAID default.")
    # -- optimizer
    optimizer_type: Literal[tuple(OPTIMIZERS)] = setting("adamw", label="Optimizer", group="Optimizer",
                                                         choices=OPTIMIZERS,
                                                         help="adamw8bit needs bitsandbytes; prodigy needs prodigyopt.")
    learning_rate: float = setting(1e-4, label="Learning rate", group="Optimizer", gt=0.0, le=10.0,
                                   help="Base learning rate (LoRA+ multiplies it for the up/B side).")
    weight_decay: float = setting(0.01, label="Weight decay", group="Optimizer", ge=0.0, help="AdamW weight decay.")
    max_grad_norm: float = setting(1.0, label="Max grad norm", group="Optimizer", ge=0.0,
                                   help="Gradient clipping; 0 disables it.")
    gradient_accumulation_steps: int = setting(1, label="Gradient accumulation", group="Optimizer", ge=1,
                                               help="Micro-batches per optimizer step.")
    lr_scheduler: Literal[tuple(SCHEDULERS)] = setting("constant", label="LR schedule", group="Optimizer",
                                                       choices=SCHEDULERS, help="Learning-rate schedule.")
    lr_warmup_steps: float = setting(0, label="Warmup", group="Optimizer", ge=0,
                                     help="Warmup steps; a value below 1 is a fraction of the total steps.")
    lr_scheduler_num_cycles: int = setting(1, label="Restart cycles", group="Optimizer", ge=1,
                                           help="cosine_with_restarts: number of cycles.")
    lr_scheduler_power: float = setting(1.0, label="Polynomial power", group="Optimizer", gt=0,
                                        help="polynomial: decay power.")
    # -- training
    max_train_steps: int = setting(1000, label="Max steps", group="Training", ge=1, help="Optimizer steps to train.")
    max_train_epochs: int | None = setting(None, label="Max epochs", group="Training", ge=1,
                                           help="If set, overrides max steps.")
    seed: int = setting(42, label="Seed", group="Training", ge=0, le=2**63 - 1,
                        help="Seed for init, data order and noise.")
    timestep_sampling: Literal[tuple(TIMESTEP_SAMPLING)] = setting(
        "shift", label="Timestep sampling", group="Training", choices=TIMESTEP_SAMPLING,
        help="How t is drawn: uniform, sigmoid(normal), shift (discrete_flow_shift), logsnr.")
    discrete_flow_shift: float = setting(3.0, label="Flow shift", group="Training", gt=0,
                                         help="shift sampling: t' = s·t / (1 + (s−1)·t).")
    sigmoid_scale: float = setting(1.0, label="Sigmoid scale", group="Training", gt=0,
                                   help="Scale of the normal before the sigmoid (sigmoid and shift sampling).")
    logit_mean: float = setting(0.0, label="Logit mean", group="Training", help="logsnr / logit_normal mean.")
    logit_std: float = setting(1.0, label="Logit std", group="Training", gt=0, help="logsnr / logit_normal std.")
    min_timestep: int = setting(0, label="Min timestep", group="Training", ge=0, le=1000,
                                help="Lower bound of sampled timesteps (0-1000).")
    max_timestep: int = setting(1000, label="Max timestep", group="Training", ge=0, le=1000,
                                help="Upper bound of sampled timesteps (0-1000).")
    weighting_scheme: Literal["none", "logit_normal"] = setting(
        "none", label="Loss weighting", group="Training", choices=["none", "logit_normal"],
        help="Per-sample loss weight as a function of t.")
    nonfinite_loss: Literal["stop", "skip"] = setting(
        "stop", label="Non-finite loss", group="Training", choices=["stop", "skip"],
        help="A NaN/inf loss stops the run with an error (stop), or its step is skipped and counted (skip; checks "
             "every step, which costs a GPU sync per step).")
    # -- memory and speed
    memory: Literal["auto", "manual"] = setting(
        "auto", label="Memory plan", group="Memory", choices=["auto", "manual"],
        help="auto: pick gradient checkpointing, scaled fp8, activation offload and blocks to swap from the GPU's "
             "free memory (or the limit below), the model and the largest bucket, and log why; manual: use the "
             "settings below as they are.")
    memory_limit_gb: float | None = setting(
        None, label="GPU memory limit (GB)", group="Memory", gt=0,
        help="Plan for, and stay under, this much GPU memory (the whole card, e.g. 24 for a 4090). Empty: the "
             "GPU's free memory.")
    mixed_precision: Literal["no", "bf16", "fp16"] = setting(
        "no", label="Mixed precision", group="Memory", choices=["no", "bf16", "fp16"],
        help="bf16 on GPUs that support it; 'no' on CPU.")
    gradient_checkpointing: bool = setting(False, label="Gradient checkpointing", group="Memory",
                                           help="Recompute block activations in backward: less memory, ~30% slower.")
    uncheckpointed_blocks: int = setting(
        0, label="Blocks without checkpointing", group="Memory", ge=0,
        help="With gradient checkpointing on, the last N blocks keep their activations instead of recomputing them "
             "in backward: faster, more memory. memory=auto keeps as many as fit.")
    fp8_base: bool = setting(False, label="fp8 base", group="Memory",
                             help="Store the frozen base weights in fp8 (adapters stay fp32).")
    fp8_scaled: bool = setting(False, label="fp8 scaled base", group="Memory",
                               help="Store the frozen block Linear weights in fp8 with one fp32 scale per output row "
                                    "(half of bf16, closer to it than plain fp8; DoRA works). ComfyUI scaled-fp8 "
                                    "checkpoints load straight into it.")
    blocks_to_swap: int = setting(0, label="Blocks to swap", group="Memory", ge=0,
                                  help="Keep this many transformer blocks' base weights in CPU memory and copy each "
                                       "to the GPU just before it runs (needs gradient checkpointing).")
    offload_activations: bool = setting(False, label="Offload activations", group="Memory",
                                        help="Keep the block inputs gradient checkpointing saves in CPU memory until "
                                             "backward (needs gradient checkpointing).")
    attn_mode: Literal["auto", "sdpa", "flash", "sage"] = setting(
        "auto", label="Attention", group="Memory", choices=["auto", "sdpa", "flash", "sage"],
        help="Attention backend. auto: on CUDA the fastest installed one for training (backend/train/memory.py), "
             "else sdpa; flash/sage need their packages.")
    compile: Literal["auto", "on", "off"] = setting(
        "auto", label="torch.compile blocks", group="Memory", choices=["auto", "on", "off"],
        help="Compile the repeated transformer blocks. auto: on with CUDA when triton is installed; off: never.")
    # -- saving
    output_dir: str = setting("", label="Output folder", group="Saving",
                              help="Where LoRA files go. Empty: the workspace's loras/ folder.")
    output_name: str = setting("lora", label="Output name", group="Saving", min_length=1,
                               help="File name stem; checkpoints get -step000100 etc.")
    save_every_n_steps: int | None = setting(None, label="Save every N steps", group="Saving", ge=1,
                                             help="Checkpoint interval in steps.")
    save_every_n_epochs: int | None = setting(None, label="Save every N epochs", group="Saving", ge=1,
                                              help="Checkpoint interval in epochs.")
    save_last_n_steps: int | None = setting(None, label="Keep last N step checkpoints", group="Saving", ge=1,
                                            help="Delete older -stepNNNNNN checkpoints (and their states) beyond "
                                                 "this many.")
    save_last_n_epochs: int | None = setting(None, label="Keep last N epoch checkpoints", group="Saving", ge=1,
                                             help="Delete older -epochNNNNNN checkpoints (and their states) beyond "
                                                  "this many.")
    save_precision: Literal["fp32", "bf16", "fp16"] = setting(
        "fp32", label="Save precision", group="Saving", choices=["fp32", "bf16", "fp16"], help="dtype of saved factors.")
    save_state: bool = setting(False, label="Save training state", group="Saving",
                               help="Also save optimizer/scheduler/RNG/data position with each checkpoint.")
    overwrite_output: bool = setting(False, label="Overwrite existing output", group="Saving",
                                     help="Replace an earlier run's LoRA files of the same name. Off: such a name is "
                                          "refused (pick e.g. name-2).")
    resume: str = setting("", label="Resume from state", group="Saving",
                          help="A *-state folder written with save_state.")
    # -- sampling
    sample_prompts: str = setting("", label="Sample prompts file", group="Sampling",
                                  help="One prompt per line; options like --w 64 --h 64 --f 5 --s 10 --d 42 --g 5 --n neg.")
    sample_every_n_steps: int | None = setting(None, label="Sample every N steps", group="Sampling", ge=1,
                                               help="Generate samples at this interval.")
    sample_every_n_epochs: int | None = setting(None, label="Sample every N epochs", group="Sampling", ge=1,
                                                help="Generate samples at this epoch interval.")
    # -- logging
    log_every_n_steps: int = setting(1, label="Log every N steps", group="Logging", ge=1,
                                     help="Interval of step events and log lines.")
    logging_dir: str = setting("", label="TensorBoard folder", group="Logging",
                               help="Write TensorBoard scalars here when tensorboard is installed.")
    # -- distributed (accelerate launch; the number of processes per machine is the Train tab's Processes box)
    distributed: Literal["ddp", "fsdp"] = setting(
        "ddp", label="Data parallel", group="Distributed", choices=["ddp", "fsdp"],
        help="ddp: every process holds the whole frozen base. fsdp: the base is sharded over the processes (less "
             "memory per GPU for 14B experts, more communication). Checkpoints are ordinary LoRA files either way.")
    num_machines: int = setting(1, label="Machines", group="Distributed", ge=1,
                                help="Machines taking part; start the same run on each with its machine_rank.")
    machine_rank: int = setting(0, label="Machine rank", group="Distributed", ge=0,
                                help="This machine's index, 0 on the main machine.")
    main_process_ip: str = setting("", label="Main machine address", group="Distributed",
                                   help="IP address of machine 0 (needed with more than one machine).")
    main_process_port: int = setting(29500, label="Main machine port", group="Distributed", ge=1, le=65535,
                                     help="TCP port machine 0 listens on for the others.")

    @classmethod
    def migrate(cls, settings: dict, from_version: int) -> dict:
        if from_version < 2 and "save_last_n" in settings:
            keep = settings.pop("save_last_n")
            settings.setdefault("save_last_n_steps", keep)
            settings.setdefault("save_last_n_epochs", keep)
        return settings

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, value):
        """Presets and runs written when compile was a checkbox hold true / false."""
        if isinstance(value, bool) or str(value).lower() in ("true", "false"):
            return "on" if str(value).lower() == "true" else "off"
        return value

    @model_validator(mode="after")
    def _check_ranges(self):
        if self.min_timestep >= self.max_timestep:
            raise ValueError(f"min_timestep ({self.min_timestep}) must be below max_timestep ({self.max_timestep})")
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank ({self.machine_rank}) must be below num_machines ({self.num_machines})")
        if self.num_machines > 1 and not self.main_process_ip.strip():
            raise ValueError(f"num_machines is {self.num_machines}: set main_process_ip to machine 0's address")
        return self

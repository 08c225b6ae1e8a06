"""The options of a Generate job beside its generation settings, each declared once with `setting(...)`: the model
and its parts, the LoRAs and their strengths, the LoRA-MoE picker, and where results go. With `GenerateSettings`
(prompt, size, sampling) and `MemoryOptions` they are the whole job: the `generate` command line's flags, the Generate
tab's widgets, the backend's checks and a job's argv all come from these fields (`PARTS`, `GenerateJob`).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict

from backend.config.settings import Settings, add_setting_arguments, setting
from backend.errors import UserError, refuse_first
from backend.generate.memory import MemoryOptions
from backend.generate.settings import GenerateSettings

DEMO_MODELS = ("demo-t2v", "demo-a14b", "demo-ti2v")
_FROZEN = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)  # each part's check words a bad number


class ModelSource(Settings):
    """Which transformer(s) run: a demo model of the workspace, or your own files with their model type."""

    model_config = _FROZEN

    model: str | None = setting(None, label="Demo model", group="Model", choices=list(DEMO_MODELS),
                                help="a demo model of the workspace")
    dit: list[str] = setting([], label="Transformer files", group="Model", metavar="FILE",
                             help="your transformer file (two for a Wan2.2 A14B pair: high-noise then low-noise)")
    model_kind: str | None = setting(None, label="Model type", group="Model",
                                     help="model type (e.g. wan2.2-t2v-a14b) or a config folder")
    boundary_ratio: float | None = setting(None, label="Expert switch point", group="Model",
                                           help="where an expert pair switches (fraction of 1000 timesteps; default: "
                                                "the model's)")


class Companions(Settings):
    """The non-transformer parts; None uses the workspace's (the demo VAE, text encoder and tokenizer)."""

    model_config = _FROZEN

    vae: str | None = setting(None, label="VAE folder", group="Other model parts",
                              help="AutoencoderKLWan folder (empty: the workspace's)")
    text_encoder: str | None = setting(None, label="Text encoder folder", group="Other model parts",
                                       help="UMT5 encoder folder (empty: the workspace's)")
    tokenizer: str | None = setting(None, label="Tokenizer folder", group="Other model parts",
                                    help="tokenizer folder (empty: the workspace's)")
    image_encoder: str | None = setting(None, label="CLIP image encoder folder", group="Other model parts",
                                        help="CLIP vision folder (Wan2.1 I2V only)")

    def given(self) -> dict[str, str]:
        return {name: value for name, value in self.model_dump().items() if value}

    def problems(self) -> dict[str, str]:
        """Each given folder that does not exist, by name, with its one sentence."""
        return {name: f"{self.named(name)} {value} does not exist; type an existing folder or leave it empty to use "
                      f"the workspace's." for name, value in self.given().items()
                if not Path(value).expanduser().is_dir()}


class LoraOptions(Settings):
    """The LoRAs applied, at which strengths, and how."""

    model_config = _FROZEN

    lora: list[str] = setting([], label="LoRA files", group="LoRAs", metavar="FILE", help="LoRA file(s)")
    loraid: list[int] = setting([], label="LORAIDs", group="LoRAs", metavar="ID",
                                help="LoRAs of the workspace's registry by their LORAID, e.g. 1 2 3; repeats are "
                                     "ignored")
    multiplier: list[float] = setting([], label="Multipliers", group="LoRAs", metavar="M",
                                      help="LoRA strength(s): one value applies to all, else one per LoRA (both forms "
                                           "accepted)")
    allow_overlap: bool = setting(False, label="Allow overlap", group="LoRAs",
                                  help="apply LoRAs that change the same weights (their changes add up)")
    hooked: bool = setting(False, label="Hooked adapters", group="LoRAs",
                           help="keep LoRAs as live adapters instead of merging them into the weights (slower steps, "
                                "multipliers changeable without reloading)")


class MoeOptions(Settings):
    """A LoRA-MoE file and how its experts are chosen."""

    model_config = _FROZEN

    moe: str | None = setting(None, label="LoRA-MoE file", group="LoRA-MoE", metavar="FILE", unset="(no LoRA-MoE)",
                              help="a LoRA-MoE file (experts + router + timestep gate)")
    hint: str | None = setting(None, label="Expert", group="LoRA-MoE", metavar="NAME", unset="router decides",
                               help="route every sample to this expert (else the router chooses)")
    expert_strength: list[str] = setting([], label="Expert strengths", group="LoRA-MoE", metavar="NAME=VALUE",
                                         help="scale experts, e.g. red=0.8 (`*=X` for all)")
    router_ema: float | None = setting(None, label="Router smoothing", group="LoRA-MoE",
                                       help="smooth the router's gates over denoising steps (β in [0, 1); default: "
                                            "the file's)")


class RunOptions(Settings):
    """Where a generation reads its workspace and prompts and writes its results."""

    model_config = _FROZEN

    workspace: str | None = setting(None, label="Workspace", group="Workspace",
                                    help="workspace folder: demo models, LoRA registry, outputs")
    from_file: str | None = setting(None, label="Prompts file", group="Prompt", metavar="PROMPTS",
                                    help="one prompt per line, musubi options after it (--w --h --f --s --d --g --n)")
    out_dir: str | None = setting(None, label="Output folder", group="Outputs",
                                  help="output folder (default: <workspace>/outputs)")
    save_latents: bool = setting(False, label="Also save latents", group="Outputs",
                                 help="also save the final latents (.safetensors)")
    save_frames: bool = setting(False, label="Also save frames as png", group="Outputs",
                                help="also save every video frame as a png")
    decode_latents: str | None = setting(None, label="Latents to decode", group="Outputs", metavar="FILE",
                                         help="decode latents saved with --save_latents (needs only the VAE) instead "
                                              "of generating")


# The Generate job, part by part, in the command line's order (each part is one group of `--help`).
PARTS: dict[str, type[Settings]] = {"model": ModelSource, "model parts": Companions, "generation": GenerateSettings,
                                    "LoRAs": LoraOptions, "LoRA-MoE": MoeOptions, "memory": MemoryOptions,
                                    "workspace and outputs": RunOptions}
# Flags whose absence on the command line means something of its own: no prompt (an error unless --from_file), no
# seed (a random one, recorded).
CLI_DEFAULTS = {"prompt": None, "seed": None}


class GenerateJob(RunOptions, MemoryOptions, MoeOptions, LoraOptions, GenerateSettings, Companions, ModelSource):
    """Every option of a Generate job in one model (the parts' fields together): what the job settings registry
    lists for `generate`."""

    model_config = _FROZEN


def add_job_arguments(parser) -> None:
    """One argparse group per part, one flag per field."""
    for title, part in PARTS.items():
        names = list(part.model_fields)
        add_setting_arguments(parser.add_argument_group(title), part, names,
                              **{name: value for name, value in CLI_DEFAULTS.items() if name in names})


def part_of(args, part: type[Settings], **changes) -> Settings:
    """A part's settings from parsed arguments (argparse typed each value already)."""
    return part(**{**{name: getattr(args, name) for name in part.model_fields}, **changes})


def lora_problems(options: LoraOptions) -> dict[str, str]:
    """The LoRA options' own rules, by field, one sentence each (the files are checked when they are read)."""
    wrong = [loraid for loraid in options.loraid if loraid < 1]
    if wrong:
        return {"loraid": f"{named('loraid')} {wrong[0]} is not a LORAID; IDs are whole numbers from 1."}
    return {}


def moe_problems(options: MoeOptions) -> dict[str, str]:
    """The LoRA-MoE options' rules, by field, one sentence each (the file's own checks come when it is read)."""
    problems = {}
    if not options.moe and (options.hint or options.expert_strength):
        problems["moe"] = (f"{named('hint')} and {named('expert_strength')} choose experts of a LoRA-MoE file; "
                           f"choose the {named('moe')} too.")
    if options.router_ema is not None and not 0.0 <= options.router_ema < 1.0:
        problems["router_ema"] = (f"{named('router_ema')} = {options.router_ema}: give a β from 0 (no smoothing) up "
                                  f"to, not including, 1.")
    return problems


def moe_file_problems(options: MoeOptions) -> dict[str, str]:
    """The picked LoRA-MoE file's own checks, by field: a readable LoRA-MoE file, an expert it has, strengths written
    NAME=VALUE for experts it has. Only the file's header is read, so a form may check it as it changes."""
    if not options.moe:
        return {}
    from backend.moe.files import read_moe_spec
    from backend.moe.inference import parse_strengths

    try:
        experts = list(read_moe_spec(options.moe).expert_names)
    except UserError as exc:
        return {"moe": str(exc)}
    problems, name = {}, Path(options.moe).name
    if options.hint and options.hint not in experts:
        problems["hint"] = (f"{named('hint')} `{options.hint}` is not an expert of {name}; choose one of "
                            f"{', '.join(experts)}, or leave it unset for the router.")
    try:
        unknown = [expert for expert in parse_strengths(options.expert_strength) if expert not in ("*", *experts)]
    except UserError as exc:
        problems["expert_strength"] = str(exc)
    else:
        if unknown:
            problems["expert_strength"] = (f"{named('expert_strength')} names `{unknown[0]}`, which is not an expert "
                                           f"of {name}; the experts are {', '.join(experts)}.")
    return problems


def check_moe_options(options: MoeOptions) -> None:
    """Refuse the first of `moe_problems`, then of `moe_file_problems`."""
    refuse_first(moe_problems(options))
    refuse_first(moe_file_problems(options))


def named(name: str) -> str:
    """Any Generate job setting as the form shows it, with its name: `Blocks to swap (blocks_to_swap)`."""
    return GenerateJob.named(name)

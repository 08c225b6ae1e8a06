"""The options of the compose jobs, each declared once: `merge` (LoRAs into a DiT), `merge-loras` (LoRAs into one
LoRA) and `ema` (post-hoc EMA of a run's checkpoints). Their command-line flags, the Merge and EMA tabs' widgets
(label, hint, starting value, choices) and the argv of the jobs those tabs start all come from these fields; the
rules that span fields (which EMA rule a flag belongs to, a pair's outputs) are in the modules that run the jobs."""
from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict

from backend.compose.ema import PRECISIONS as EMA_PRECISIONS
from backend.compose.ema import SPACES
from backend.compose.ema_weights import SIGMA_REL_LIMIT, beta_weights, gamma_from_sigma_rel
from backend.compose.merge_dit import OUTPUT_DTYPES
from backend.config.field_checks import checked
from backend.config.settings import Settings, setting
from backend.errors import UserError
from backend.system.devices import DEVICES, device_problem
LORA_PRECISIONS = ("fp32", "bf16", "fp16")
RULES = ("power", "beta", "uniform")
RULE_VALUES = {"power": ("sigma_rel",), "beta": ("beta", "beta2"), "uniform": ()}  # the fields each rule reads


class _ComposeSettings(Settings):
    # frozen like a request; non-finite numbers reach the jobs' own checks, which word them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)


def _overwrite():
    return setting(False, label="Overwrite", group="Output", help="replace an existing output file")


def _allow_overlap():
    return setting(False, label="Allow overlap", group="Merge",
                   help="merge LoRAs that change the same weights (their changes add up)")


class MergeSettings(_ComposeSettings):
    """`python -m backend merge`: fold LoRAs into a base DiT checkpoint; on a Wan2.2 A14B pair the high-noise expert
    gets its own LoRAs and output."""

    dit: str = setting(..., label="Base DiT checkpoint", group="Model", metavar="FILE",
                       help="base DiT checkpoint (.safetensors file or shard folder); on a Wan2.2 A14B pair, the "
                            "low-noise expert")
    lora: list[str] = setting(..., label="LoRA files", group="LoRAs", metavar="FILE", help="LoRA file(s) to fold in")
    multiplier: list[float] = setting([], label="Strengths", group="LoRAs", metavar="M",
                                      help="LoRA strength(s): one value applies to all, else one per LoRA "
                                           "(default 1.0)")
    out: str = setting(..., label="Output file", group="Output", metavar="FILE",
                       help="merged checkpoint to write (.safetensors)")
    dit_high_noise: str | None = setting(None, label="High-noise expert", group="Model", metavar="FILE",
                                         help="Wan2.2 A14B pair only: the high-noise expert checkpoint")
    lora_high_noise: list[str] = setting([], label="High-noise LoRA files", group="LoRAs", metavar="FILE",
                                         help="LoRA file(s) for the high-noise expert")
    multiplier_high_noise: list[float] = setting([], label="High-noise strengths", group="LoRAs", metavar="M",
                                                 help="strength(s) of the high-noise expert's LoRAs: one value "
                                                      "applies to all, else one per LoRA (default 1.0)")
    out_high_noise: str | None = setting(None, label="High-noise output file", group="Output", metavar="FILE",
                                         help="merged high-noise checkpoint to write (.safetensors)")
    device: Literal[DEVICES] = setting("cpu", label="Compute on", group="Merge", choices=DEVICES,
                                       help="cpu or cuda (the weights still stream from disk)")
    dtype: Literal[tuple(OUTPUT_DTYPES)] = setting("same", label="Output dtype", group="Merge",
                                                   choices=list(OUTPUT_DTYPES),
                                                   help="dtype of the merged floating-point tensors (same: as in "
                                                        "the base)")
    allow_overlap: bool = _allow_overlap()
    overwrite: bool = _overwrite()

    def rules(self, name_of) -> dict[str, str]:
        """What this machine refuses (a cuda device without a GPU), worded with `name_of` (a label or a flag)."""
        problem = device_problem(self.device, name_of("device"))
        return {"device": problem} if problem else {}


class MergeLorasSettings(_ComposeSettings):
    """`python -m backend merge-loras`: merge LoRA files into one LoRA, exactly or resized by SVD."""

    lora: list[str] = setting(..., label="LoRA files", group="LoRAs", metavar="FILE",
                              help="LoRA files to merge (2 or more)")
    multiplier: list[float] = setting([], label="Strengths", group="LoRAs", metavar="M",
                                      help="LoRA strength(s): one value applies to all, else one per LoRA "
                                           "(default 1.0)")
    out: str = setting(..., label="Output file", group="Output", metavar="FILE",
                       help="merged LoRA file to write (.safetensors)")
    rank: int | None = setting(None, label="Rank", group="Merge", ge=1,
                               help="resize the merged LoRA by SVD to this rank (empty: exact, ranks concatenated)")
    precision: Literal[LORA_PRECISIONS] = setting("fp32", label="Saved precision", group="Merge",
                                                  choices=LORA_PRECISIONS, help="saved weight dtype")
    allow_overlap: bool = _allow_overlap()
    overwrite: bool = _overwrite()


class EmaSettings(_ComposeSettings):
    """`python -m backend ema`: post-hoc EMA of a run's LoRA checkpoints by one averaging rule; only the values of
    the chosen rule are used (and given to the job)."""

    inputs: list[str] = setting(..., label="Run folder or checkpoints", group="Checkpoints",
                                metavar="RUN_DIR_OR_FILES",
                                help="a run folder (its *.safetensors, sub-folders included) or checkpoint files")
    out: str = setting(..., label="Output LoRA file", group="Output", metavar="FILE",
                       help="EMA LoRA file to write (.safetensors)")
    rule: Literal[RULES] = setting("power", label="Averaging rule", group="Rule", choices=RULES,
                                   help="power: EDM2's power EMA of width σ_rel, by real steps; beta: musubi's decay "
                                        "β → β2; uniform: the plain mean of the checkpoints")
    sigma_rel: float = setting(0.2, label="σ_rel", group="Rule",
                               help=f"power EMA width, 0 < σ_rel < {SIGMA_REL_LIMIT:.4f} (typical: 0.05-0.25)")
    beta: float = setting(0.95, label="β", group="Rule", help="beta EMA: decay at the second checkpoint (0 ≤ β < 1)")
    beta2: float | None = setting(None, label="β2", group="Rule",
                                  help="beta EMA: decay at the last checkpoint, linear in between (empty: β)")
    space: Literal[SPACES] = setting("factors", label="Averaging space", group="Output", choices=SPACES,
                                     help="factors: average the stored tensors (fast); delta: average ΔW = B·A "
                                          "exactly and re-factorize to the input rank by SVD (LoRA / LoCon)")
    precision: Literal[EMA_PRECISIONS] = setting("same", label="Saved precision", group="Output",
                                                 choices=EMA_PRECISIONS,
                                                 help="saved weight dtype (same: as the newest checkpoint)")
    overwrite: bool = _overwrite()

    def unused(self) -> tuple[str, ...]:
        """The rule values the chosen rule does not read (left out of the job's argv)."""
        return tuple(name for rule, names in RULE_VALUES.items() if rule != self.rule for name in names)

    def preset_defaults(self, given: set[str]) -> dict:
        """The chosen rule's values only, and none when the command line names a rule or a rule's value: it
        infers the rule from the values it is given."""
        rule_settings = {"rule", *(name for names in RULE_VALUES.values() for name in names)}
        left_out = rule_settings if given & rule_settings else set(self.unused())
        return {name: value for name, value in self.model_dump().items() if name not in left_out}

    def rule_values(self) -> dict:
        """`post_hoc_ema`'s keyword arguments for the chosen rule."""
        values = {"sigma_rel": None, "beta": None, "beta2": None, "uniform": self.rule == "uniform"}
        return values | {name: getattr(self, name) for name in RULE_VALUES[self.rule]}

    def check_rule(self) -> float | None:
        """The chosen rule's values in range (one sentence each, else a UserError); γ for the power rule."""
        if self.rule == "power":
            return gamma_from_sigma_rel(self.sigma_rel)
        if self.rule == "beta":
            beta_weights(2, self.beta, self.beta2)
        return None

    def arguments(self) -> list[str]:
        """The job's argv after `python -m backend`: the inputs, then the flags of the set fields of the rule."""
        return ["ema", *self.inputs, *self.flag_arguments(leave_out=("inputs", *self.unused()))]


def ema_from_flags(values: dict) -> EmaSettings:
    """EmaSettings from the `ema` command line, where the rule may follow from the values given: `--beta 0.9` alone
    means the beta rule, `--uniform` the plain mean, nothing the power EMA at σ_rel 0.2."""
    values = dict(values)
    given = {name for name in ("sigma_rel", "beta", "beta2") if values.get(name) is not None}
    implied = [rule for rule, names in RULE_VALUES.items() if given & set(names)]
    rule = values.get("rule") or (implied[0] if len(implied) == 1 else "power")
    stray = sorted(given - set(RULE_VALUES[rule]))
    if stray:
        chosen = ", ".join(f"--{name}" for name in sorted(given)) + (f" and --rule {rule}" if values.get("rule") else "")
        raise UserError(f"{chosen} belong to different averaging rules; give the values of one rule (power: "
                        f"--sigma_rel; beta: --beta [--beta2]; or --uniform).")
    if rule == "beta" and values.get("beta2") is not None and values.get("beta") is None:
        raise UserError("--beta2 needs --beta, the start of the interpolation.")
    values["rule"] = rule
    return checked(EmaSettings, {name: value for name, value in values.items() if value is not None})

"""Stage-2 settings: every training setting (TrainSettings) plus the LoRA-MoE ones, declared once.

network_dim / network_alpha / network_args give each expert's rank, alpha, per-projection ranks and targets (as in
stage 1). The Train tab's LoRA-MoE mode, `python -m backend moe train --config FILE` and presets all use this model.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from backend.config.settings import setting
from backend.moe.network import ROUTING_MODES, MoeSpec
from backend.moe.router import ROUTER_INPUTS
from backend.train.settings import TrainSettings

MOE = "LoRA-MoE"


class MoeTrainSettings(TrainSettings):
    SCHEMA_VERSION: ClassVar[int] = 2

    expert_names: list[str] = setting(["expert_1", "expert_2"], label="Expert names", group=MOE,
                                      help="One name per expert (E = their number); hints and the Expert choice of "
                                           "generation use them.")
    hint_tags: list[str] = setting([], label="Hint caption tags", group=MOE,
                                   help="Caption tag of each expert, in the order of the names (a caption holding "
                                        "the tag as a word is labelled with that expert). Empty: the names "
                                        "themselves. A dataset's `expert_label` overrides the captions.")
    routing_mode: Literal[tuple(ROUTING_MODES)] = setting(
        "learned+hint", label="Routing", group=MOE, choices=list(ROUTING_MODES),
        help="learned: the router alone; hint: gates from the labels (no router); learned+hint: the router, "
             "guided towards the labels by a KL term.")
    router_inputs: Literal[tuple(ROUTER_INPUTS)] = setting(
        "text", label="Router inputs", group=MOE, choices=list(ROUTER_INPUTS),
        help="What the router sees besides the timestep: the pooled text embedding, latent statistics, or both.")
    router_hidden: int = setting(64, label="Router hidden size", group=MOE, ge=1, help="Width of the router MLP.")
    top_k: int = setting(2, label="Top-k", group=MOE, ge=1,
                         help="Experts kept per sample; their gates are renormalised to sum 1.")
    router_lr: float | None = setting(None, label="Router learning rate", group=MOE, gt=0.0,
                                      help="Empty: 10 × the learning rate.")
    gate_lr: float | None = setting(None, label="Timestep gate learning rate", group=MOE, gt=0.0,
                                    help="Empty: 10 × the learning rate.")
    gate_knots: int = setting(8, label="Timestep gate knots", group=MOE, ge=2, le=64,
                              help="τ(t) is piecewise linear over this many points.")
    hint_weight_start: float = setting(1.0, label="Hint KL weight (start)", group=MOE, ge=0.0,
                                       help="learned+hint: weight of KL(hint ‖ router) at the first step.")
    hint_weight_end: float = setting(0.1, label="Hint KL weight (end)", group=MOE, ge=0.0,
                                     help="learned+hint: the weight at the last step (linear in between).")
    load_balance_weight: float = setting(0.01, label="Load-balancing α", group=MOE, ge=0.0,
                                         help="Switch loss α·E·Σ f_e·P_e (α when routing is uniform).")
    z_loss_weight: float = setting(0.001, label="Router z-loss", group=MOE, ge=0.0,
                                   help="Weight of mean logsumexp(logits)².")
    entropy_weight: float = setting(0.0, label="Routing entropy", group=MOE,
                                    help="Weight of the mean per-sample routing entropy (positive: confident "
                                         "routing; negative: spread-out routing).")
    roi_weight: float = setting(1.0, label="ROI loss weight", group=MOE, ge=1.0,
                                help="Loss weight inside the masks of datasets with a mask_directory (3-5 in "
                                     "surgical video); 1 disables ROI weighting.")
    router_holdout: float = setting(0.0, label="Router hold-out fraction", group=MOE, ge=0.0, lt=1.0,
                                    help="Fraction of labelled items kept out of training; the router's agreement "
                                         "with their labels is reported at the end.")
    router_ema: float = setting(0.0, label="Router EMA (inference)", group=MOE, ge=0.0, lt=1.0,
                                help="Default smoothing β of the gates over denoising steps at inference "
                                     "(stored in the file; training never smooths).")

    @model_validator(mode="after")
    def _check_moe(self):
        if self.hint_tags and len(self.hint_tags) != len(self.expert_names):
            raise ValueError(f"hint_tags has {len(self.hint_tags)} entries for {len(self.expert_names)} experts; "
                             "give one tag per expert or none")
        if self.network_type != "lora":
            raise ValueError("LoRA-MoE experts are LoRA; set network_type to lora")
        if self.loraid is not None:
            raise ValueError("LoRA-MoE trains the blocks chosen by network_args include/exclude patterns; "
                             "leave loraid empty")
        self.spec()
        return self

    def spec(self) -> MoeSpec:
        return MoeSpec(expert_names=tuple(self.expert_names), rank=self.network_dim, alpha=self.network_alpha,
                       network_args=tuple(self.network_args), routing_mode=self.routing_mode,
                       router_inputs=self.router_inputs, router_hidden=self.router_hidden, top_k=self.top_k,
                       gate_knots=self.gate_knots)

    @property
    def tags(self) -> list[str]:
        return list(self.hint_tags or self.expert_names)

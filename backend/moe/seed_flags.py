"""The command-line flags of the public LoRA-MoE fork of musubi-tuner, mapped onto ours (or refused with a sentence
naming our equivalent), so its users can paste their command lines.

    translate_train(argv)     -> argv for `python -m backend moe train`  (`--name value` settings)
    translate_generate(argv)  -> argv for `python -m backend generate --moe ...`
Anything not listed passes through unchanged (our own flags, or an unknown one that the parser then names).
"""
from __future__ import annotations

from backend.errors import UserError

RANK_FLAGS = ("rank_q", "rank_k", "rank_v", "rank_o", "rank_kvo", "rank_ffn")
TASKS = {"t2v-A14B": "wan2.2-t2v-a14b", "i2v-A14B": "wan2.2-i2v-a14b", "ti2v-5B": "wan2.2-ti2v-5b",
         "t2v-1.3B": "wan2.1-t2v-1.3b", "t2v-14B": "wan2.1-t2v-14b", "i2v-14B": "wan2.1-i2v-14b"}
ROUTING = {"learned": "learned", "rule": "hint", "rule_based": "hint", "hint": "hint", "teacher": "learned+hint",
           "learned+hint": "learned+hint"}


def _split(argv: list[str]) -> list[tuple[str, list[str]]]:
    """[(flag, values)], `--a=b` split; tokens before the first flag are kept as ("", values)."""
    pairs: list[tuple[str, list[str]]] = []
    for token in argv:
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            pairs.append((name, [value] if eq else []))
        elif pairs:
            pairs[-1][1].append(token)
        else:
            pairs.append(("", [token]))
    return pairs


def _one(flag: str, values: list[str]) -> str:
    if len(values) != 1:
        raise UserError(f"{flag} takes one value, e.g. `{flag} 4`.")
    return values[0]


def _task(values: list[str]) -> str:
    task = _one("--task", values)
    if task not in TASKS:
        raise UserError(f"--task {task} is not a Wan task we know; use --model_kind with one of "
                        f"{', '.join(sorted(set(TASKS.values())))}.")
    return TASKS[task]


def translate_train(argv: list[str]) -> list[str]:
    out: list[str] = []
    network_args: list[str] = []
    num_experts = None
    routing = None
    teacher = False
    for flag, values in _split(argv):
        name = flag[2:]
        if name == "training_stage":
            stage = _one(flag, values)
            if stage in ("stage_a", "stage_1", "a", "1"):
                raise UserError("stage 1 is ordinary training: run `accelerate launch -m backend.train` with "
                                "`--network_args rank_q=8 rank_kvo=4 ...` (or the Train tab), then "
                                "`python -m backend moe merge` to fold it into the DiT files.")
        elif name == "num_experts":
            num_experts = int(_one(flag, values))
        elif name == "routing_mode":
            value = _one(flag, values)
            if value not in ROUTING:
                raise UserError(f"--routing_mode {value} is unknown; use learned, hint (rule-based) or learned+hint.")
            routing = ROUTING[value]
        elif name == "use_teacher_guidance":
            teacher = True
        elif name in ("train_router", "no_use_base_lora"):
            continue  # the router always trains in learned modes; there is never a base LoRA (stage 1 is merged)
        elif name == "use_base_lora":
            raise UserError("a base LoRA inside the MoE is not supported: merge stage 1 into the DiT files with "
                            "`python -m backend moe merge` and train stage 2 on them.")
        elif name in RANK_FLAGS:
            network_args.append(f"{name}={_one(flag, values)}")
        elif name == "lora_dim":
            out += ["--network_dim", _one(flag, values)]
        elif name == "lora_alpha":
            out += ["--network_alpha", _one(flag, values)]
        elif name == "task":
            out += ["--model_kind", _task(values)]
        elif name == "instrument_hint":
            raise UserError("--instrument_hint is an inference flag; in training each sample's hint comes from its "
                            "caption (--hint_tags) or its dataset's expert_label. At generation use --hint NAME.")
        elif name in ("alpha_expert", "alpha_base"):
            raise UserError(f"--{name} is an inference flag; use `python -m backend generate --moe FILE "
                            f"--expert_strength NAME=VALUE`.")
        else:
            out += ([flag] if flag else []) + values
    if num_experts is not None and "--expert_names" not in out:
        if num_experts < 2:
            raise UserError("--num_experts must be at least 2.")
        out += ["--expert_names", *[f"expert_{i + 1}" for i in range(num_experts)]]
    if teacher:
        if routing == "hint":
            raise UserError("--use_teacher_guidance guides a learned router; drop it or use --routing_mode learned.")
        routing = "learned+hint"
    if routing is not None:
        out += ["--routing_mode", routing]
    if network_args:
        out += ["--network_args", *network_args]
    return out


def translate_generate(argv: list[str]) -> list[str]:
    out: list[str] = []
    for flag, values in _split(argv):
        name = flag[2:]
        if name == "lora_moe_weights":
            out += ["--moe", *values]
        elif name == "instrument_hint":
            out += ["--hint", *values]
        elif name == "alpha_expert":
            out += ["--expert_strength", f"*={_one(flag, values)}"]
        elif name == "alpha_base":
            if float(_one(flag, values)) != 0.0:
                raise UserError("--alpha_base has nothing to scale: stage 1 is merged into the DiT files; to change "
                                "its strength merge again with `python -m backend moe merge --multiplier X`.")
        elif name == "dit_high_noise":
            raise UserError("give both experts to --dit, high-noise first: `--dit HIGH.safetensors LOW.safetensors`.")
        elif name == "task":
            out += ["--model_kind", _task(values)]
        else:
            out += ([flag] if flag else []) + values
    return out

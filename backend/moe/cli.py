"""`python -m backend moe <action>`: the LoRA-MoE workflow from the command line.

    moe merge  --workspace W --lora stage1.safetensors [--multiplier 1.0]        # into both demo A14B experts
    moe merge  --lora S1 --dit LOW --dit_high_noise HIGH --out_dir D --name N    # your own pair
    moe train  --config moe.toml [--workspace W] [--name value ...]               # stage 2 (seed flags accepted)
    moe export --moe FILE --expert NAME --out expert.safetensors                  # one expert as a plain LoRA
    moe demo   --workspace W --out_dir D                                         # the whole demo + its measures
    moe route  --moe FILE --prompt P [--workspace W] [--steps N] [--hint NAME] [--json]   # gates before a run
    moe stage1-args --blocks "last 8" --ffn_blocks "last 3" --rank_q 8 --rank_kvo 4 --rank_ffn 4 --num_blocks 40
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backend.errors import UserError
from backend.jobs.protocol import JobContext

ACTIONS = ("merge", "train", "export", "stage1-args", "demo", "route")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="merge: fold stage 1 into the DiT files; train: stage 2; "
                                                         "export: one expert as a LoRA; stage1-args: network_args; "
                                                         "route: the router's gates for a prompt")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the action's options (`moe ACTION --help`)")


def _merge(argv: list[str]) -> int:
    from backend.compose.output_names import MERGED_DIT_FOLDER
    from backend.moe.merge_stage1 import Stage1Merge, merge_stage1
    from backend.workspace import Workspace

    parser = argparse.ArgumentParser(prog="python -m backend moe merge",
                                     description="Fold a stage-1 LoRA into both experts of an A14B pair (or one DiT).")
    parser.add_argument("--lora", required=True, help="the stage-1 LoRA")
    parser.add_argument("--lora_high_noise", default=None, help="a separate stage-1 LoRA for the high-noise expert")
    parser.add_argument("--multiplier", type=float, default=1.0, help="strength of the stage-1 LoRA (default 1.0)")
    parser.add_argument("--workspace", default=None, help="workspace: default DiTs are its demo A14B pair")
    parser.add_argument("--dit", default=None, help="low-noise expert (A14B) or the single DiT")
    parser.add_argument("--dit_high_noise", default=None, help="high-noise expert")
    parser.add_argument("--out_dir", default=None, help="folder of the merged files (default: W/outputs/merged)")
    parser.add_argument("--name", default="", help="merged files' name: NAME-high_noise / NAME-low_noise "
                                                   "(default: the LoRA's name without -low_noise)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="same", choices=["same", "fp32", "bf16", "fp16"])
    args = parser.parse_args(argv)
    workspace = Workspace(args.workspace) if args.workspace else None
    dit, high = args.dit, args.dit_high_noise
    if dit is None and high is None:
        if workspace is None:
            raise UserError("no DiT given; pass --dit LOW --dit_high_noise HIGH, or --workspace W for its demo pair.")
        from backend.models.demo import expert_file

        dit, high = expert_file(workspace, "low"), expert_file(workspace, "high")
    out_dir = args.out_dir
    if out_dir is None:
        if workspace is None:
            raise UserError("no output folder; pass --out_dir DIR (or --workspace W).")
        out_dir = workspace.root.joinpath(*MERGED_DIT_FOLDER)
    request = Stage1Merge(Path(args.lora), Path(out_dir), Path(dit) if dit else None, Path(high) if high else None,
                          Path(args.lora_high_noise) if args.lora_high_noise else None, args.multiplier,
                          args.device, args.dtype, args.name)
    with JobContext.from_env() as ctx:
        ctx.emit("start", total=100, lora=args.lora)
        parts = len(request.plan())
        done_parts: list[str] = []

        def progress(label: str, done: int, total: int) -> None:
            if done == total:
                done_parts.append(label)
            if done == total or done % max(1, total // 20) == 0:
                share = (len(done_parts) - (done == total) + done / total) / parts
                ctx.emit("progress", step=int(100 * share), total=100, part=label)

        results = merge_stage1(request, progress)
        for result in results:
            for warning in result.warnings:
                print(f"warning: {warning}")
            print(f"wrote {result.out} ({result.adapted_weights} weights adapted, {result.seconds:.1f} s)")
            ctx.emit("checkpoint", path=str(result.out))
        ctx.emit("end", status="succeeded", outputs=[str(r.out) for r in results],
                 merged=" | ".join(str(r.out) for r in results))
    return 0


def parse_train(argv: list[str]):
    from backend.moe.seed_flags import translate_train
    from backend.moe.settings import MoeTrainSettings
    from backend.workspace import Workspace

    parser = argparse.ArgumentParser(prog="python -m backend moe train", description="LoRA-MoE stage 2.",
                                     epilog="Any setting as --name value (backend/moe/settings.py); the LoRA-MoE "
                                            "fork's flags (--num_experts, --routing_mode, --rank_q ...) are mapped.")
    parser.add_argument("--config", default=None, help="run TOML or preset JSON (MoeTrainSettings)")
    parser.add_argument("--workspace", default=None, help="workspace folder")
    args, rest = parser.parse_known_args(argv)
    settings = MoeTrainSettings.load_file(args.config) if args.config else MoeTrainSettings()
    overrides = MoeTrainSettings.parse_cli_overrides(translate_train(rest))
    if "network_args" in overrides:  # add to the config's network_args; a key given again replaces it
        given = {entry.split("=", 1)[0] for entry in overrides["network_args"]}
        kept = [entry for entry in settings.network_args if entry.split("=", 1)[0] not in given]
        overrides["network_args"] = kept + overrides["network_args"]
    if overrides:
        settings = settings.with_overrides(overrides)
    workspace = Workspace(args.workspace) if args.workspace else None
    return settings, workspace


def _train(argv: list[str]) -> int:
    from backend.moe.train import train_moe

    settings, workspace = parse_train(argv)
    train_moe(settings, workspace)
    return 0


def _export(argv: list[str]) -> int:
    from backend.moe.files import export_expert, load_moe

    parser = argparse.ArgumentParser(prog="python -m backend moe export",
                                     description="Write one expert as an ordinary LoRA (musubi / ComfyUI layout).")
    parser.add_argument("--moe", required=True, help="the LoRA-MoE file")
    parser.add_argument("--expert", required=True, help="the expert's name")
    parser.add_argument("--out", required=True, help="output .safetensors (A14B pairs: one file per noise "
                                                     "expert, suffixed -high_noise / -low_noise)")
    args = parser.parse_args(argv)
    for path in export_expert(load_moe(args.moe), args.expert, args.out):
        print(f"wrote {path}")
    return 0


def _stage1_args(argv: list[str]) -> int:
    from backend.moe.stage1 import parse_blocks, stage1_network_args

    parser = argparse.ArgumentParser(prog="python -m backend moe stage1-args",
                                     description="network_args for stage 1 (per-projection ranks, chosen blocks).")
    parser.add_argument("--num_blocks", type=int, required=True, help="blocks of the model (40 for Wan 14B)")
    parser.add_argument("--blocks", default="", help='attention blocks: "32-39", "last 8", "0,1,5-7"')
    parser.add_argument("--ffn_blocks", default="", help="blocks whose first FFN linear is trained")
    parser.add_argument("--attention", default="both", choices=["self", "cross", "both"])
    for key in ("rank_q", "rank_kvo", "rank_ffn"):
        parser.add_argument(f"--{key}", type=int, default=None)
    args = parser.parse_args(argv)
    entries = stage1_network_args(parse_blocks(args.blocks, args.num_blocks),
                                  parse_blocks(args.ffn_blocks, args.num_blocks), rank_q=args.rank_q,
                                  rank_kvo=args.rank_kvo, rank_ffn=args.rank_ffn, attention=args.attention)
    print(" ".join(f'"{entry}"' for entry in entries))
    return 0


def _demo(argv: list[str]) -> int:
    from backend.moe.demo import STAGE1_STEPS, STAGE2_STEPS, run_demo
    from backend.workspace import Workspace

    parser = argparse.ArgumentParser(prog="python -m backend moe demo",
                                     description="Stage 1 -> merge -> stage 2 on the demo workspace, then measure.")
    parser.add_argument("--workspace", required=True, help="a demo workspace with the demo dataset cached")
    parser.add_argument("--out_dir", required=True, help="folder for the LoRA, the merged pair and the MoE file")
    parser.add_argument("--stage1_steps", type=int, default=STAGE1_STEPS)
    parser.add_argument("--stage2_steps", type=int, default=STAGE2_STEPS)
    parser.add_argument("--seed", type=int, default=42, help="training seed of both stages")
    parser.add_argument("--dora", action="store_true", help="DoRA experts in stage 2")
    args = parser.parse_args(argv)
    run_demo(Workspace(args.workspace), Path(args.out_dir), args.stage1_steps, args.stage2_steps, seed=args.seed,
             dora=args.dora)
    return 0


def _route(argv: list[str]) -> int:
    import json

    from backend.data import encoders
    from backend.generate.settings import SAMPLERS, GenerateSettings
    from backend.moe.files import load_moe
    from backend.moe.route import denoising_timesteps, format_routing, prompt_embedding, route_prompt
    from backend.workspace import Workspace

    defaults = GenerateSettings()
    parser = argparse.ArgumentParser(prog="python -m backend moe route",
                                     description="The gates a LoRA-MoE router chooses for a prompt, per noise expert, "
                                                 "at the steps of a run with these settings (no transformer loaded).")
    parser.add_argument("--moe", required=True, help="the LoRA-MoE file")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--workspace", default=None, help="workspace: its text encoder and tokenizer by default")
    parser.add_argument("--text_encoder", default=None, help="UMT5 encoder folder (default: the workspace's)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the workspace's)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--sampler", choices=list(SAMPLERS), default=defaults.sampler)
    parser.add_argument("--flow_shift", type=float, default=defaults.flow_shift)
    parser.add_argument("--boundary_ratio", type=float, default=None,
                        help="high/low-noise split (default: the file's model kind's)")
    parser.add_argument("--hint", default=None, metavar="NAME", help="the expert a run would be forced to")
    parser.add_argument("--router_ema", type=float, default=None, help="gate smoothing β (default: the file's)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="starting noise (routers reading latents)")
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--frames", type=int, default=defaults.frames)
    parser.add_argument("--json", action="store_true", help="print the routing as JSON")
    args = parser.parse_args(argv)
    moe = load_moe(args.moe)
    ws = Workspace(args.workspace) if args.workspace else None
    encoder_dir = args.text_encoder or (ws and ws.text_encoder)
    tokenizer_dir = args.tokenizer or (ws and ws.tokenizer)
    if not encoder_dir or not tokenizer_dir:
        raise UserError("no text encoder; pass --text_encoder DIR --tokenizer DIR (or --workspace W for its own).")
    tokenizer, text_encoder = encoders.load_text_encoder(encoder_dir, tokenizer_dir)
    text = prompt_embedding(text_encoder, tokenizer, args.prompt)
    routing = route_prompt(moe, text, denoising_timesteps(args.sampler, args.flow_shift, args.steps),
                           boundary_ratio=args.boundary_ratio, hint=args.hint, router_ema=args.router_ema,
                           seed=args.seed, size=(args.frames, args.height, args.width))
    print(json.dumps(routing) if args.json else format_routing(routing))
    return 0


def run(args: argparse.Namespace) -> int:
    action = {"merge": _merge, "train": _train, "export": _export, "stage1-args": _stage1_args,
              "demo": _demo, "route": _route}[args.action]
    try:
        return action(list(args.rest))
    except UserError as exc:
        if args.action in ("train", "merge"):
            with JobContext.from_env() as ctx:
                ctx.emit("error", message=str(exc))
                ctx.emit("end", status="failed", message=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2

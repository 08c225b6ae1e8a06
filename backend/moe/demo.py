"""The LoRA-MoE demo, end to end on the demo workspace (CPU, about a minute):

1. stage 1: an ordinary LoRA on the demo A14B low-noise expert, attention of the last 4 blocks (q rank 8, k/v/o 4)
   and the first FFN linear of the last 2 (rank 4), both concepts, long enough to take in what both concepts share
   (what is left for stage 2 is what tells them apart);
2. merge it into both demo A14B DiT files;
3. stage 2: two experts ("red" = concept A's caption tag loraidA, "blue" = loraidB), learned routing with hint
   supervision, on both merged experts, a third of the labelled items held out;
4. measure, on the held-out items only: the router's agreement with the labels, and each expert alone (exported as
   a plain LoRA) on each concept's items (evaluate.py), on each noise expert at its own noise levels. A specialised
   expert lowers the flow-matching loss of its own concept's items more than the other concept's, and more than the
   other expert does on them.

`python -m backend moe demo --workspace W [--out_dir D]`: W needs the demo dataset's caches (Dataset tab, or
`python -m backend cache latents|text --dataset_config W/datasets/demo/dataset.toml`).
"""
from __future__ import annotations

import json
from pathlib import Path

from backend.jobs.protocol import JobContext
from backend.workspace import Workspace

EXPERTS, TAGS = ["red", "blue"], ["loraidA", "loraidB"]
HOLDOUT = 0.3
LOW_TIMESTEPS, HIGH_TIMESTEPS = (0.1, 0.3, 0.5, 0.7), (0.9, 0.95)  # each noise expert at its own noise levels


STAGE1_STEPS, STAGE2_STEPS = 150, 60


def stage1_settings(workspace: Workspace, out_dir: Path, steps: int = STAGE1_STEPS, seed: int = 42):
    from backend.moe.stage1 import stage1_network_args
    from backend.train.settings import TrainSettings

    args = stage1_network_args([4, 5, 6, 7], [6, 7], rank_q=8, rank_kvo=4, rank_ffn=4)
    return TrainSettings(model_kind="demo-a14b", expert="low", dataset_config="datasets/demo/dataset.toml",
                         network_dim=4, network_alpha=4.0, network_args=args, learning_rate=5e-3,
                         max_train_steps=steps, timestep_sampling="uniform", output_dir=str(out_dir),
                         output_name="moe-demo-stage1", seed=seed)


def stage2_settings(merged: Path, out_dir: Path, steps: int = STAGE2_STEPS, seed: int = 42, dora: bool = False):
    from backend.moe.settings import MoeTrainSettings

    return MoeTrainSettings(model_kind="demo-a14b", expert="both",
                            dit=str(merged / "moe-demo-stage1-low_noise.safetensors"),
                            dit_high_noise=str(merged / "moe-demo-stage1-high_noise.safetensors"),
                            dataset_config="datasets/demo/dataset.toml", network_dim=4, network_alpha=4.0,
                            network_args=["rank_q=8", *(["use_dora=True"] if dora else [])], learning_rate=3e-3,
                            max_train_steps=steps,
                            timestep_sampling="uniform", expert_names=EXPERTS, hint_tags=TAGS,
                            routing_mode="learned+hint", router_holdout=HOLDOUT, output_dir=str(out_dir),
                            output_name="moe-demo", seed=seed)


def run_demo(workspace: Workspace, out_dir: Path, stage1_steps: int = STAGE1_STEPS,
             stage2_steps: int = STAGE2_STEPS, log=print, seed: int = 42, dora: bool = False) -> dict:
    from backend.data.cached_dataset import CachedDataset
    from backend.models.demo import expert_file
    from backend.models.loading import load_transformer
    from backend.moe.evaluate import expert_specificity
    from backend.moe.files import load_moe
    from backend.moe.labels import Labeller, held_out
    from backend.moe.merge_stage1 import Stage1Merge, merge_stage1
    from backend.moe.train import train_moe
    from backend.train.loop import train

    out_dir = Path(out_dir)
    quiet = lambda *_: None  # noqa: E731
    train(stage1_settings(workspace, out_dir, stage1_steps, seed), workspace, JobContext(), log=quiet)
    stage1 = out_dir / "moe-demo-stage1-low_noise.safetensors"
    merged = out_dir / "merged"
    merge_stage1(Stage1Merge(stage1, merged, expert_file(workspace, "low"), expert_file(workspace, "high")))
    log(f"stage 1: {stage1.name}, merged into {merged}")
    events = out_dir / "stage2-events.jsonl"
    train_moe(stage2_settings(merged, out_dir, stage2_steps, seed, dora), workspace, JobContext(events_path=events), log=quiet)
    records = [json.loads(line) for line in events.read_text().splitlines()]
    evaluation = next(r for r in records if r["event"] == "router_eval")
    log(f"stage 2: router agreement on {evaluation['items']} held-out items: {evaluation['agreement']:.1%}")

    moe = load_moe(out_dir / "moe-demo.safetensors")
    dataset = CachedDataset.from_file(workspace.demo_dataset / "dataset.toml")
    labeller = Labeller(EXPERTS, TAGS, dataset.datasets)
    by_expert = {name: [] for name in EXPERTS}
    for item in dataset.items:
        label = labeller.label(item)
        if label is not None and held_out(item.key, HOLDOUT):
            by_expert[EXPERTS[label]].append(dataset.load_batch([item]))
    log("held-out items: " + ", ".join(f"{len(batches)} {name}" for name, batches in by_expert.items()))
    measured = {}
    for label, timesteps in (("low", LOW_TIMESTEPS), ("high", HIGH_TIMESTEPS)):
        model = load_transformer(merged / f"moe-demo-stage1-{label}_noise.safetensors", "demo-a14b",
                                 expert=label).eval()
        measured[label] = expert_specificity(model, moe, label, by_expert, timesteps)
        for measure in ("change", "gain"):
            for expert, row in measured[label][measure].items():
                log(f"{label:4s} {measure:6s} {expert:4s}: " +
                    ", ".join(f"on {c} items {v:.4f}" for c, v in row.items()))
    return {"router_agreement": evaluation["agreement"], "held_out": evaluation["items"], **measured["low"],
            "high": measured["high"],
            "held_out_by_expert": {name: len(batches) for name, batches in by_expert.items()},
            "moe_file": str(out_dir / "moe-demo.safetensors"), "merged": str(merged)}

"""The demo workspace: tiny Wan-architecture models and the two-concept sample dataset, made locally from a seed.

Everything is built in a staging folder inside the workspace, checked by running the assembled pipeline for two
denoising steps, and only then moved into place; `workspace.json` is written last. A build that fails leaves the
workspace as it was. Same seed -> byte-identical files.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from backend.data.sample_dataset import caption_sentences, write_sample_dataset
from backend.errors import UserError
from backend.fileio import atomic_write_bytes, atomic_write_json
from backend.models import demo_parts
from backend.models.registry import EXPERT_STEMS, EXPERTS, get_model_kind
from backend.workspace import WORKSPACE_SCHEMA_VERSION, Workspace

TRANSFORMER_FILE = "transformer.safetensors"
# What the demo owns inside a workspace (relative paths); a rebuild replaces exactly these.
DEMO_PARTS = ("models/demo-t2v", "models/demo-a14b", "models/demo-ti2v", "models/vae", "models/vae-wan2.2",
              "models/text_encoder", "models/tokenizer", "datasets/demo")
CHECK_FRAMES, CHECK_SIZE, CHECK_STEPS = 5, 32, 2


@contextlib.contextmanager
def _quiet_progress_bars():
    """transformers draws a progress bar for every tiny save/load; keep job logs readable."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def expert_file(workspace: Workspace, expert: str) -> Path:
    """`models/demo-a14b/high_noise.safetensors` or `low_noise.safetensors`."""
    return workspace.demo_a14b / f"{EXPERT_STEMS[expert]}.safetensors"


def demo_transformer_file(workspace: Workspace, kind_name: str, expert: str | None = None) -> Path:
    """The workspace file of a demo kind's transformer (an expert's for demo-a14b)."""
    if kind_name == "demo-ti2v":
        return workspace.demo_ti2v / TRANSFORMER_FILE
    return workspace.demo_t2v / TRANSFORMER_FILE if expert is None else expert_file(workspace, expert)


def demo_vae_folder(workspace: Workspace, kind_name: str | None) -> Path:
    """The demo VAE a kind's latents come from: the Wan2.2 VAE for TI2V kinds, the Wan2.1 one otherwise."""
    if kind_name is not None and get_model_kind(kind_name).uses_wan22_vae:
        return workspace.vae_wan22
    return workspace.vae


def _save_transformer(model, folder: Path, name: str, kind_name: str, seed: int, expert: str | None = None) -> None:
    from backend.models.loading import save_transformer_original

    # One metadata key: safetensors writes several keys in a random order, which would break byte-identity.
    about = {"kind": kind_name, "seed": seed, "expert": expert}
    save_transformer_original(model, folder / name, {"loraid_studio.demo": json.dumps(about, sort_keys=True)})
    config_file = get_model_kind(kind_name).config_dir(expert) / "config.json"
    atomic_write_bytes(folder / "config.json", config_file.read_bytes())


def _build_models(ws: Workspace, seed: int) -> None:
    _save_transformer(demo_parts.build_transformer("demo-t2v", seed, part=10), ws.demo_t2v, TRANSFORMER_FILE,
                      "demo-t2v", seed)
    for part, expert in enumerate(EXPERTS, start=11):
        model = demo_parts.build_transformer("demo-a14b", seed, part, expert)
        _save_transformer(model, ws.demo_a14b, expert_file(ws, expert).name, "demo-a14b", seed, expert)
    _save_transformer(demo_parts.build_transformer("demo-ti2v", seed, part=13), ws.demo_ti2v, TRANSFORMER_FILE,
                      "demo-ti2v", seed)
    tokenizer = demo_parts.train_tokenizer(caption_sentences() + list(demo_parts.EXTRA_SENTENCES))
    tokenizer.save_pretrained(str(ws.tokenizer))
    with _quiet_progress_bars():
        demo_parts.build_text_encoder(len(tokenizer), seed).save_pretrained(str(ws.text_encoder))
    demo_parts.build_vae(seed).save_pretrained(str(ws.vae))
    demo_parts.build_vae_wan22(seed).save_pretrained(str(ws.vae_wan22))


def _marker(ws: Workspace, seed: int) -> dict:
    def rel(path: Path) -> str:
        return path.relative_to(ws.root).as_posix()

    return {
        "schema_version": WORKSPACE_SCHEMA_VERSION,
        "created_by": "python -m backend demo",
        "demo": {
            "seed": seed,
            "models": {
                "demo-t2v": rel(ws.demo_t2v / TRANSFORMER_FILE),
                "demo-a14b": {expert: rel(expert_file(ws, expert)) for expert in EXPERTS},
                "demo-ti2v": rel(ws.demo_ti2v / TRANSFORMER_FILE),
                "vae": rel(ws.vae), "vae_wan2.2": rel(ws.vae_wan22), "text_encoder": rel(ws.text_encoder),
                "tokenizer": rel(ws.tokenizer),
            },
            "datasets": {
                "demo": rel(ws.demo_dataset / "dataset.toml"),
                "concept_a": rel(ws.demo_dataset / "concept_a" / "dataset.toml"),
                "concept_b": rel(ws.demo_dataset / "concept_b" / "dataset.toml"),
            },
        },
    }


def _refuse_foreign_parts(ws: Workspace) -> None:
    present = [part for part in DEMO_PARTS if (ws.root / part).exists()]
    if present:
        raise UserError(f"{ws.root} already holds {present[0]} but has no workspace.json, so it may be someone "
                        f"else's data; choose an empty folder or pass --force to replace the demo parts.")


def _move_into_place(staging: Path, root: Path) -> None:
    for part in DEMO_PARTS:
        target, staged = root / part, staging / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staged, target)
            shutil.rmtree(old)
        else:
            os.replace(staged, target)


def build_demo_workspace(root: str | Path, seed: int = 0, force: bool = False) -> Workspace:
    """Create (or, with force, rebuild) the demo parts of the workspace at `root`; an existing one is kept."""
    ws = Workspace(Path(root))
    if ws.exists() and not force:
        return ws
    if not force:
        _refuse_foreign_parts(ws)
    ws.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-build-", dir=ws.root))
    try:
        staged = Workspace(staging)
        _build_models(staged, seed)
        write_sample_dataset(staged.demo_dataset, seed)
        run_pipeline_check(staged)
        run_ti2v_pipeline_check(staged)
        _move_into_place(staging, ws.root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    ws.ensure_folders()
    atomic_write_json(ws.marker, _marker(ws, seed))
    return ws


def load_demo_pipeline(workspace: Workspace, expert: str | None = None):
    """A diffusers `WanPipeline` on the demo models, offline.

    expert None: the single demo-t2v transformer; "high" / "low": that demo-a14b expert alone;
    "both": the A14B-style pair switching at the shipped timestep boundary.
    """
    from diffusers import AutoencoderKLWan, WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    from backend.models.loading import load_transformer

    if expert is None:
        transformer, transformer_2, boundary = load_transformer(workspace.demo_t2v / TRANSFORMER_FILE), None, None
    elif expert in EXPERTS:
        transformer, transformer_2, boundary = load_transformer(expert_file(workspace, expert)), None, None
    elif expert == "both":
        transformer = load_transformer(expert_file(workspace, "high"))
        transformer_2 = load_transformer(expert_file(workspace, "low"))
        boundary = get_model_kind("demo-a14b").timestep_boundary
    else:
        raise UserError(f"Unknown demo expert `{expert}`; choose high, low, both, or none for the demo-t2v model.")
    with _quiet_progress_bars():
        text_encoder = UMT5EncoderModel.from_pretrained(str(workspace.text_encoder), local_files_only=True).eval()
    pipeline = WanPipeline(
        tokenizer=AutoTokenizer.from_pretrained(str(workspace.tokenizer), local_files_only=True),
        text_encoder=text_encoder,
        vae=AutoencoderKLWan.from_pretrained(str(workspace.vae), local_files_only=True).eval(),
        scheduler=demo_parts.demo_scheduler(),
        transformer=transformer, transformer_2=transformer_2, boundary_ratio=boundary,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run_pipeline_check(workspace: Workspace, expert: str | None = None, seed: int = 0):
    """Two denoising steps of a 5-frame 32x32 video; returns the frames (numpy, [1, F, H, W, 3] in [0, 1])."""
    import numpy as np
    import torch

    pipeline = load_demo_pipeline(workspace, expert)
    output = pipeline("loraidA, a red ball bouncing on a warm background", negative_prompt="",
                      num_frames=CHECK_FRAMES, height=CHECK_SIZE, width=CHECK_SIZE,
                      num_inference_steps=CHECK_STEPS, guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(seed), output_type="np")
    frames = np.asarray(output.frames)
    expected = (1, CHECK_FRAMES, CHECK_SIZE, CHECK_SIZE, 3)
    if frames.shape != expected or not np.isfinite(frames).all():
        raise RuntimeError(f"demo pipeline check gave frames of shape {frames.shape} (expected {expected}), "
                           f"finite: {bool(np.isfinite(frames).all())}")
    return frames


def load_demo_ti2v_pipeline(workspace: Workspace, image: bool = False):
    """The demo TI2V model in diffusers' Wan2.2 TI2V pipelines (`expand_timesteps=True`: a timestep per token):
    `WanPipeline` for text-to-video, `WanImageToVideoPipeline` (first latent frame clean, timestep 0) with `image`."""
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    from backend.models.loading import load_transformer

    folder = demo_transformer_file(workspace, "demo-ti2v")
    if not folder.exists():
        raise UserError(f"The workspace has no demo TI2V model ({folder} is missing); rebuild the demo parts with "
                        f"`python -m backend demo --workspace {workspace.root} --force`.")
    with _quiet_progress_bars():
        text_encoder = UMT5EncoderModel.from_pretrained(str(workspace.text_encoder), local_files_only=True).eval()
    cls = WanImageToVideoPipeline if image else WanPipeline
    pipeline = cls(tokenizer=AutoTokenizer.from_pretrained(str(workspace.tokenizer), local_files_only=True),
                   text_encoder=text_encoder,
                   vae=AutoencoderKLWan.from_pretrained(str(workspace.vae_wan22), local_files_only=True).eval(),
                   scheduler=demo_parts.demo_scheduler(), transformer=load_transformer(folder),
                   expand_timesteps=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run_ti2v_pipeline_check(workspace: Workspace, seed: int = 0):
    """Two denoising steps of the demo TI2V model, text-to-video then from a start image (a mid-grey square);
    returns both videos (numpy, [1, F, H, W, 3] in [0, 1])."""
    import numpy as np
    import torch
    from PIL import Image

    from backend.generate.pipeline import ti2v_pipeline

    expected = (1, CHECK_FRAMES, CHECK_SIZE, CHECK_SIZE, 3)
    results = []
    text_pipeline = load_demo_ti2v_pipeline(workspace)
    for image in (None, Image.new("RGB", (CHECK_SIZE, CHECK_SIZE), (128, 128, 128))):
        pipeline = text_pipeline if image is None else ti2v_pipeline(text_pipeline, image=True)
        kwargs = {} if image is None else {"image": image}
        output = pipeline(prompt="loraidA, a red ball bouncing on a warm background", negative_prompt="",
                          num_frames=CHECK_FRAMES, height=CHECK_SIZE, width=CHECK_SIZE,
                          num_inference_steps=CHECK_STEPS, guidance_scale=1.0,
                          generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs)
        frames = np.asarray(output.frames)
        if frames.shape != expected or not np.isfinite(frames).all():
            raise RuntimeError(f"demo TI2V pipeline check gave frames of shape {frames.shape} (expected {expected}), "
                               f"finite: {bool(np.isfinite(frames).all())}")
        results.append(frames)
    return results

"""Samples during training: every N steps and/or epochs, each prompt of the sample prompts file is generated with
the transformer(s) being trained (adapters live, eval mode), decoded by the run's VAE and written beside the LoRA
files, in their `samples/` subfolder (so they never sit among the checkpoints), as
`samples/<output_name>-step000010-00.mp4` (or `.png` for one frame), each announced by a `sample` event. With
several processes each generates its share of the prompts (prompt i on process i mod N, recorded as "process" in
the file's settings) and the main process announces them all.

The pipeline is built once, on first use, around the run's own transformers: nothing is loaded twice. A Wan2.2
A14B run that trains one expert samples with that expert over the whole trajectory (the log says so); `both`
switches experts at the run's boundary, as generation does. TI2V-5B samples are text-to-video (a timestep per token,
`expand_timesteps`, its Wan2.2 VAE), whichever ti2v_mode trains.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from backend.generate.engine import decode_latents
from backend.generate.outputs import write_mp4, write_png
from backend.generate.pipeline import ModelChoice, companion_folders
from backend.generate.settings import make_scheduler
from backend.models.registry import get_model_kind
from backend.train.sample_prompts import SamplePrompt, load_sample_prompts

SAMPLE_FPS = 16
SAMPLES_FOLDER = "samples"  # under the run's output folder


class TrainingSamples:
    def __init__(self, settings, workspace, transformers: dict[str, torch.nn.Module], boundary: float | None,
                 folder: Path, emit: Callable[..., None], say: Callable[[str], None]) -> None:
        self.settings, self.workspace, self.folder = settings, workspace, folder
        self.transformers, self.boundary = transformers, boundary
        self.emit, self.say = emit, say
        self.prompts: list[SamplePrompt] = load_sample_prompts(settings.sample_prompts) if settings.sample_prompts \
            else []
        self._pipeline = None

    @property
    def enabled(self) -> bool:
        return bool(self.prompts) and bool(self.settings.sample_every_n_steps or self.settings.sample_every_n_epochs)

    def due_at_step(self, step: int) -> bool:
        every = self.settings.sample_every_n_steps
        return self.enabled and bool(every) and step % every == 0

    def due_at_epoch(self, epoch: int) -> bool:
        every = self.settings.sample_every_n_epochs
        return self.enabled and bool(every) and epoch % every == 0

    def write(self, step: int, epoch: int, autocast=None) -> list[Path]:
        """Generate every prompt now (one process) and announce each sample."""
        written = self.generate(step, autocast)
        self.announce(step, epoch, written)
        return [Path(path) for _, path in written]

    def generate(self, step: int, autocast=None, rank: int = 0, world: int = 1) -> list[tuple[int, str]]:
        """This process's share of the prompts (index ≡ rank mod world) as (index, path); the transformers go back to
        training mode afterwards. Several processes split the prompts; the main one announces them all."""
        pipeline = self._pipeline or self._build()
        modes = {label: model.training for label, model in self.transformers.items()}
        written = []
        try:
            for model in self.transformers.values():
                model.eval()
            for index, prompt in enumerate(self.prompts):
                if index % world == rank:
                    written.append((index, str(self._one(pipeline, prompt, step, index, autocast, rank))))
        finally:
            for label, model in self.transformers.items():
                model.train(modes[label])
        return written

    def announce(self, step: int, epoch: int, written: list[tuple[int, str]]) -> None:
        """One `sample` event and log line per written sample, in prompt order."""
        for index, path in sorted(written):
            self.emit("sample", path=path, step=step, epoch=epoch, prompt=self.prompts[index].prompt, index=index)
            self.say(f"sample {path}")

    def _one(self, pipeline, prompt: SamplePrompt, step: int, index: int, autocast, rank: int = 0) -> Path:
        pipeline.scheduler = make_scheduler("unipc", self.settings.discrete_flow_shift)
        kwargs = dict(prompt=prompt.prompt, negative_prompt=prompt.negative_prompt, height=prompt.height,
                      width=prompt.width, num_frames=prompt.frames, num_inference_steps=prompt.steps,
                      guidance_scale=prompt.guidance_scale, generator=torch.Generator().manual_seed(prompt.seed),
                      output_type="latent")
        with torch.no_grad(), (autocast() if autocast is not None else nullcontext()):
            latents = pipeline(**kwargs).frames
        frames = decode_latents(pipeline.vae, latents.float())
        record = {"prompt": prompt.__dict__, "step": step, "output_name": self.settings.output_name,
                  "process": rank}
        folder = self.folder / SAMPLES_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{self.settings.output_name}-step{step:06d}-{index:02d}"
        if len(frames) == 1:
            return write_png(stem.with_suffix(".png"), frames[0], record)
        return write_mp4(stem.with_suffix(".mp4"), frames, SAMPLE_FPS, record)

    def _build(self):
        from diffusers import AutoencoderKLWan, WanPipeline
        from transformers import AutoTokenizer, UMT5EncoderModel

        s = self.settings
        choice = ModelChoice(workspace=self.workspace.root if self.workspace is not None else None,
                             model_kind=s.model_kind, vae=s.vae or None, text_encoder=s.text_encoder or None)
        vae_dir, encoder_dir, tokenizer_dir = companion_folders(choice)
        device = next(iter(self.transformers.values())).device
        if "high" in self.transformers and "low" in self.transformers:
            first, second, boundary = self.transformers["high"], self.transformers["low"], self.boundary
        else:
            (label, first), second, boundary = next(iter(self.transformers.items())), None, None
            if label in ("high", "low"):
                self.say(f"samples use the {label}-noise expert being trained for every step (one expert trains).")
        self._pipeline = WanPipeline(
            tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True),
            text_encoder=UMT5EncoderModel.from_pretrained(str(encoder_dir), local_files_only=True).eval().to(device),
            vae=AutoencoderKLWan.from_pretrained(str(vae_dir), local_files_only=True).eval().to(device),
            scheduler=make_scheduler("unipc", s.discrete_flow_shift), transformer=first, transformer_2=second,
            boundary_ratio=boundary, expand_timesteps=get_model_kind(s.model_kind).task == "ti2v")
        self._pipeline.set_progress_bar_config(disable=True)
        return self._pipeline


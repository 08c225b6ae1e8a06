"""Where things live inside a workspace folder. Every part of the app finds its files through this one layout.

<workspace>/
  workspace.json            marker + schema version
  models/demo-t2v/          tiny Wan2.1-T2V transformer (original Wan key names) + diffusers config.json
  models/demo-a14b/         tiny Wan2.2-A14B-style pair: high_noise.safetensors, low_noise.safetensors, config.json
  models/demo-ti2v/         tiny Wan2.2-TI2V-5B-shaped transformer (48 latent channels) + diffusers config.json
  models/vae/               tiny AutoencoderKLWan (diffusers folder)
  models/vae-wan2.2/        tiny Wan2.2 VAE (AutoencoderKLWan with 48 latent channels, 16x spatial compression)
  models/text_encoder/      tiny UMT5EncoderModel (transformers folder)
  models/tokenizer/         tokenizer trained locally (PreTrainedTokenizerFast folder)
  datasets/demo/            sample dataset (images/, videos/, captions) + dataset.toml
  loras/                    LoRA files trained or imported
  outputs/                  generated videos / images / merged models
  jobs/<job_id>/            one folder per job (command, settings, log.txt, events.jsonl, status)
  presets/                  user presets (JSON): Train's; merge/, merge-loras/ and ema/ hold the other jobs'
  loraid_registry.json      which LORAIDs are taken by which files
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WORKSPACE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def marker(self) -> Path:
        return self.root / "workspace.json"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def demo_t2v(self) -> Path:
        return self.models / "demo-t2v"

    @property
    def demo_a14b(self) -> Path:
        return self.models / "demo-a14b"

    @property
    def demo_ti2v(self) -> Path:
        return self.models / "demo-ti2v"

    @property
    def vae(self) -> Path:
        return self.models / "vae"

    @property
    def vae_wan22(self) -> Path:
        return self.models / "vae-wan2.2"

    @property
    def text_encoder(self) -> Path:
        return self.models / "text_encoder"

    @property
    def tokenizer(self) -> Path:
        return self.models / "tokenizer"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def demo_dataset(self) -> Path:
        return self.datasets / "demo"

    @property
    def loras(self) -> Path:
        return self.root / "loras"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def presets(self) -> Path:
        return self.root / "presets"

    @property
    def loraid_registry(self) -> Path:
        return self.root / "loraid_registry.json"

    def exists(self) -> bool:
        return self.marker.is_file()

    def ensure_folders(self) -> None:
        for folder in (self.models, self.datasets, self.loras, self.outputs, self.jobs, self.presets):
            folder.mkdir(parents=True, exist_ok=True)

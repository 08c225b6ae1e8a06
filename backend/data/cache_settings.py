"""The cache jobs' options, declared once: `python -m backend cache latents|text`'s flags, the Dataset tab's cache
widgets and a cache job's argv all come from these fields (rules that depend on this machine are in `rules`)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

from backend.config.field_checks import NameOf
from backend.config.settings import Settings, setting
from backend.models.registry import MODEL_KINDS
from backend.system.devices import DEVICES, device_problem

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DATASET, MODELS, RUN = "Dataset", "Models", "Run"


class CacheSettings(Settings):
    """What every cache job takes; `LatentCacheSettings` and `TextCacheSettings` add their own options."""

    WHAT: ClassVar[str] = ""

    dataset_config: str = setting("", label="Dataset TOML", group=DATASET, help="musubi-tuner dataset TOML")
    workspace: str | None = setting(None, label="Workspace", group=MODELS,
                                    help="workspace whose demo models are the defaults")
    device: str = setting("cpu", label="Device", group=RUN, choices=DEVICES, help="where the model runs")
    dtype: str = setting("auto", label="Precision", group=RUN, choices=DTYPE_CHOICES,
                         help="model precision; auto: bfloat16 on cuda, float32 on cpu")
    batch_size: int = setting(1, label="Encode batch size", group=RUN, ge=1, help="items encoded together")
    skip_existing: bool = setting(True, label="Keep current files", group=RUN,
                                  help="keep cache files that are already current (a stopped run continues)")

    FOLDERS: ClassVar[tuple[str, ...]] = ()  # model folders: each must exist when given

    def rules(self, name_of: NameOf) -> dict[str, str]:
        problems = {}
        if not self.dataset_config.strip():
            problems["dataset_config"] = f"{name_of('dataset_config')} is empty; give the dataset TOML to cache."
        problem = device_problem(self.device, name_of("device"))
        if problem:
            problems["device"] = problem
        for name in self.FOLDERS:
            folder = getattr(self, name)
            if folder and not Path(folder).expanduser().is_dir():
                problems[name] = (f"{name_of(name)} {folder} is not a folder; give the folder that holds the model's "
                                  "files, or leave it empty for the workspace's demo model.")
        return problems

    def job_argv(self) -> list[str]:
        """The command a cache job runs."""
        return [sys.executable, "-m", "backend", "cache", self.WHAT, *self.flag_arguments()]

    def job_title(self) -> str:
        path = Path(self.dataset_config)
        return f"Cache {self.WHAT}: {path.parent.name}/{path.name}"

    def job_record(self) -> dict:
        """The settings a cache job is saved with (the Dataset tab reads `what` and `dataset_config` back)."""
        return {"what": self.WHAT, **self.model_dump()}


class LatentCacheSettings(CacheSettings):
    WHAT: ClassVar[str] = "latents"
    FOLDERS: ClassVar[tuple[str, ...]] = ("vae",)

    model_kind: str | None = setting(None, label="Model type", group=MODELS, choices=list(MODEL_KINDS),
                                     help="latents: the model they are for (e.g. wan2.2-ti2v-5b); checks the VAE "
                                          "fits it (empty: any)")
    vae: str | None = setting(None, label="VAE folder", group=MODELS,
                              help="AutoencoderKLWan folder (latents; empty: the workspace's demo VAE)")
    i2v: bool = setting(False, label="Image-to-video conditioning", group=RUN,
                        help="latents: also cache I2V first-frame conditioning")
    vae_tiling: bool = setting(False, label="Encode in tiles", group=RUN,
                               help="latents: encode in tiles (less memory)")


class TextCacheSettings(CacheSettings):
    WHAT: ClassVar[str] = "text"
    FOLDERS: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")

    text_encoder: str | None = setting(None, label="Text encoder folder", group=MODELS,
                                       help="UMT5EncoderModel folder (text; empty: the workspace's demo encoder)")
    tokenizer: str | None = setting(None, label="Tokenizer folder", group=MODELS,
                                    help="tokenizer folder (text; empty: the workspace's demo tokenizer)")
    max_sequence_length: int = setting(512, label="Text length (tokens)", group=RUN, ge=1,
                                       help="text: token length")


CACHE_SETTINGS: dict[str, type[CacheSettings]] = {"latents": LatentCacheSettings, "text": TextCacheSettings}


def declared_fields() -> dict[type[CacheSettings], list[str]]:
    """Each cache option once, under the model that declares it (the `cache` command takes them all)."""
    shared = list(CacheSettings.model_fields)
    return {CacheSettings: shared, **{model: [name for name in model.model_fields if name not in shared]
                                      for model in CACHE_SETTINGS.values()}}


def in_workspace(what: str, values: dict, root: Path) -> dict:
    """The values one cache job (`what`) takes from a form of all cache options, run for the workspace `root`:
    relative model folders are taken from it (not from the app's working folder), and its demo models are the
    defaults."""
    model = CACHE_SETTINGS[what]
    own = {name: value for name, value in values.items() if name in model.model_fields}
    for name in model.FOLDERS:
        folder = own.get(name)
        if isinstance(folder, str) and folder.strip() and not Path(folder).expanduser().is_absolute():
            own[name] = str(root / folder.strip())
    return {**own, "workspace": str(root)}

"""A demo workspace with concept A's latents and text cached, built once per session (about 15 s on a CPU)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_PRESET = REPO / "presets" / "demo.json"


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory):
    from backend.data import encoders
    from backend.data.cache import cache_latents, cache_text
    from backend.data.dataset_config import load_dataset_config
    from backend.models.demo import build_demo_workspace

    ws = build_demo_workspace(tmp_path_factory.mktemp("train_ws"), seed=0)
    config = load_dataset_config(ws.demo_dataset / "concept_a" / "dataset.toml")
    cache_latents(config, encoders.load_vae(ws.vae), model_id=encoders.model_fingerprint(ws.vae), log=lambda *_: None)
    tokenizer, text_encoder = encoders.load_text_encoder(ws.text_encoder, ws.tokenizer)
    cache_text(config, tokenizer, text_encoder, model_id=encoders.model_fingerprint(ws.text_encoder, ws.tokenizer),
               log=lambda *_: None)
    return ws


@pytest.fixture
def demo_settings():
    """The shipped demo preset, as the trainer reads it."""
    from backend.train.settings import TrainSettings

    return TrainSettings.load_file(DEMO_PRESET)

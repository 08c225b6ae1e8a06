"""A demo workspace with both concepts' latents and text cached, built once per session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def moe_workspace(tmp_path_factory):
    from backend.data import encoders
    from backend.data.cache import cache_latents, cache_text
    from backend.data.dataset_config import load_dataset_config
    from backend.models.demo import build_demo_workspace

    ws = build_demo_workspace(tmp_path_factory.mktemp("moe_ws"), seed=0)
    config = load_dataset_config(ws.demo_dataset / "dataset.toml")
    cache_latents(config, encoders.load_vae(ws.vae), model_id=encoders.model_fingerprint(ws.vae), log=lambda *_: None)
    tokenizer, text_encoder = encoders.load_text_encoder(ws.text_encoder, ws.tokenizer)
    cache_text(config, tokenizer, text_encoder, model_id=encoders.model_fingerprint(ws.text_encoder, ws.tokenizer),
               log=lambda *_: None)
    return ws

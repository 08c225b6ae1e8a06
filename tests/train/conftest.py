"""A demo workspace with concept A's latents and text cached, built once per session (about 15 s on a CPU)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_PRESET = REPO / "presets" / "demo.json"


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory):
    from backend.models.demo import build_demo_workspace
    from tests.demo_files import cache_concept_a

    ws = build_demo_workspace(tmp_path_factory.mktemp("train_ws"), seed=0)
    cache_concept_a(ws)
    return ws


@pytest.fixture
def demo_settings():
    """The shipped demo preset, as the trainer reads it."""
    from backend.train.settings import TrainSettings

    return TrainSettings.load_file(DEMO_PRESET)

import hashlib
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def musubi_dir() -> Path:
    """Golden files written by musubi-tuner (tests/fixtures/musubi/README.md says how they were made)."""
    return REPO_ROOT / "tests" / "fixtures" / "musubi"


@pytest.fixture(scope="session")
def musubi_config_dir(musubi_dir, tmp_path_factory) -> Path:
    """A diffusers config folder with the dimensions fixture.json gives for musubi's tiny DiT."""
    model = json.loads((musubi_dir / "fixture.json").read_text())["model"]
    config = {
        "_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2],
        "num_attention_heads": model["num_heads"], "attention_head_dim": model["dim"] // model["num_heads"],
        "in_channels": model["in_dim"], "out_channels": model["out_dim"], "text_dim": model["text_dim"],
        "freq_dim": model["freq_dim"], "ffn_dim": model["ffn_dim"], "num_layers": model["num_layers"],
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
    }
    folder = tmp_path_factory.mktemp("musubi_config")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory):
    import time

    from backend.models.demo import build_demo_workspace

    started = time.perf_counter()
    workspace = build_demo_workspace(tmp_path_factory.mktemp("demo_ws") / "ws", seed=0)
    print(f"\ndemo workspace built and checked in {time.perf_counter() - started:.1f} s")
    return workspace


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def hash_tree():
    return tree_hashes

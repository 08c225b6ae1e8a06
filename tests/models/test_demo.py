import json
import os
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backend.__main__ import main as cli_main
from backend.data.sample_dataset import CLIP_FRAMES, CLIP_SIZE
from backend.errors import UserError
from backend.models.checkpoint import read_checkpoint_shapes
from backend.models.demo import build_demo_workspace, expert_file, run_pipeline_check
from backend.models.names import wan_to_diffusers
from backend.models.registry import MODEL_KINDS
from backend.workspace import WORKSPACE_SCHEMA_VERSION, Workspace

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


@pytest.fixture(scope="module")
def cli_built_workspace(tmp_path_factory, repo_root) -> Workspace:
    """A second build of the same seed, by the command line in a fresh process with the network cut off."""
    root = tmp_path_factory.mktemp("cli_ws") / "ws"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    env.update(OFFLINE_ENV)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "backend", "demo", "--workspace", str(root), "--seed", "0"],
                            cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    print(f"\nCLI demo build (new process, offline) took {time.perf_counter() - started:.1f} s")
    assert result.returncode == 0, result.stderr
    assert "Demo workspace ready" in result.stdout
    return Workspace(root)


def test_two_builds_are_byte_identical(demo_workspace, cli_built_workspace, hash_tree):
    first, second = hash_tree(demo_workspace.root), hash_tree(cli_built_workspace.root)
    assert len(first) >= 40
    assert first == second


def test_rerun_is_idempotent_and_force_keeps_user_files(cli_built_workspace, capsys, hash_tree):
    root = cli_built_workspace.root
    before = hash_tree(root)
    assert cli_main(["demo", "--workspace", str(root)]) == 0
    assert "already exists" in capsys.readouterr().out
    assert hash_tree(root) == before

    mine = root / "loras" / "mine.safetensors"
    mine.write_bytes(b"user data")
    build_demo_workspace(root, seed=0, force=True)
    assert mine.read_bytes() == b"user data"
    after = hash_tree(root)
    after.pop("loras/mine.safetensors")
    assert after == before
    assert not [p.name for p in root.rglob(".*")]  # no staging or old folders left behind


def test_transformer_file_keeps_original_wan_names_and_loads_with_from_single_file(demo_workspace):
    from diffusers import WanTransformer3DModel

    folder = demo_workspace.demo_t2v
    names = set(read_checkpoint_shapes(folder / "transformer.safetensors"))
    assert "blocks.7.self_attn.q.weight" in names and "head.modulation" in names and "blocks.0.modulation" in names
    assert not [n for n in names if "attn1" in n or "condition_embedder" in n or "scale_shift_table" in n]

    model = WanTransformer3DModel.from_single_file(str(folder / "transformer.safetensors"), config=str(folder),
                                                   local_files_only=True)
    stored = load_file(str(folder / "transformer.safetensors"))
    state = model.state_dict()
    assert {wan_to_diffusers(n) for n in stored} == set(state)
    assert all(torch.equal(state[wan_to_diffusers(n)], t) for n, t in stored.items())
    assert json.loads((folder / "config.json").read_text()) == MODEL_KINDS["demo-t2v"].config()


def test_a14b_pair_has_one_shape_and_different_weights(demo_workspace):
    high = load_file(str(expert_file(demo_workspace, "high")))
    low = load_file(str(expert_file(demo_workspace, "low")))
    t2v = load_file(str(demo_workspace.demo_t2v / "transformer.safetensors"))
    assert {k: v.shape for k, v in high.items()} == {k: v.shape for k, v in low.items()}
    assert not torch.equal(high["blocks.0.self_attn.q.weight"], low["blocks.0.self_attn.q.weight"])
    assert not torch.equal(high["blocks.0.self_attn.q.weight"], t2v["blocks.0.self_attn.q.weight"])
    assert len({k.split(".")[1] for k in high if k.startswith("blocks.")}) >= 8


def test_parts_fit_together(demo_workspace):
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    transformer = MODEL_KINDS["demo-t2v"].config()
    vae = AutoencoderKLWan.load_config(str(demo_workspace.vae))
    encoder = UMT5EncoderModel.from_pretrained(str(demo_workspace.text_encoder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(demo_workspace.tokenizer), local_files_only=True)
    assert vae["z_dim"] == transformer["in_channels"] == 16
    assert encoder.config.d_model == transformer["text_dim"]
    assert encoder.config.num_layers == 2 and not encoder.training
    assert len(tokenizer) == encoder.config.vocab_size
    ids = tokenizer("loraidA, a red ball", padding="max_length", max_length=16)["input_ids"]
    assert ids[-1] == tokenizer.pad_token_id == 0
    assert ids[ids.index(0) - 1] == tokenizer.eos_token_id == 1
    assert len(tokenizer.tokenize("loraidA")) <= 2  # the trigger word was learned, not spelled out
    assert tokenizer.unk_token_id not in tokenizer("a red ball bouncing on a warm background")["input_ids"]


def test_sample_dataset_has_two_distinct_captioned_concepts(demo_workspace):
    import av
    from PIL import Image

    root = demo_workspace.demo_dataset
    images, clips = sorted(root.rglob("*.png")), sorted(root.rglob("*.mp4"))
    assert len(images) >= 8 and len(clips) >= 4
    mean_colour = {}
    for concept, trigger in (("concept_a", "loraidA"), ("concept_b", "loraidB")):
        media = [p for p in images + clips if p.parent.parent.name == concept]
        for path in media:
            assert path.with_suffix(".txt").read_text().startswith(f"{trigger}, ")
        pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3)
                                 for p in media if p.suffix == ".png"])
        mean_colour[concept] = pixels.mean(axis=0)
    (ra, _, ba), (rb, _, bb) = mean_colour["concept_a"], mean_colour["concept_b"]
    assert ra > ba + 40 and bb > rb + 40  # warm red/orange versus cool blue

    with av.open(str(clips[0])) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert stream.codec_context.name == "h264"
    assert len(frames) == CLIP_FRAMES and frames[0].shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).sum() > 0  # something moves


@pytest.mark.parametrize("toml_path", ["dataset.toml", "concept_a/dataset.toml", "concept_b/dataset.toml"])
def test_dataset_toml_follows_musubi_schema(demo_workspace, toml_path):
    path = demo_workspace.demo_dataset / toml_path
    config = tomllib.loads(path.read_text())
    assert config["general"]["caption_extension"] == ".txt"
    assert config["general"]["resolution"] == [64, 64]
    assert len(config["datasets"]) == (4 if toml_path == "dataset.toml" else 2)
    caches = set()
    for entry in config["datasets"]:
        directory = entry.get("image_directory") or entry.get("video_directory")
        assert (path.parent / directory).is_dir()
        if "video_directory" in entry:
            assert all((n - 1) % 4 == 0 for n in entry["target_frames"]) and entry["frame_extraction"] == "head"
        caches.add(entry["cache_directory"])
    assert len(caches) == len(config["datasets"])  # images and videos never share a cache folder


def test_workspace_marker(demo_workspace):
    marker = json.loads(demo_workspace.marker.read_text())
    assert marker["schema_version"] == WORKSPACE_SCHEMA_VERSION and marker["demo"]["seed"] == 0
    paths = [marker["demo"]["models"]["demo-t2v"], *marker["demo"]["models"]["demo-a14b"].values(),
             *marker["demo"]["datasets"].values()]
    assert all((demo_workspace.root / p).is_file() for p in paths)
    for folder in (demo_workspace.loras, demo_workspace.outputs, demo_workspace.jobs, demo_workspace.presets):
        assert folder.is_dir()


def test_pipeline_runs_two_steps_and_switches_experts(demo_workspace):
    started = time.perf_counter()
    frames = run_pipeline_check(demo_workspace)
    print(f"\n2-step demo pipeline (load + run) took {time.perf_counter() - started:.2f} s")
    assert frames.shape == (1, 5, 32, 32, 3) and 0.0 <= frames.min() and frames.max() <= 1.0
    assert np.array_equal(frames, run_pipeline_check(demo_workspace))  # seeded
    high, both = run_pipeline_check(demo_workspace, "high"), run_pipeline_check(demo_workspace, "both")
    # timesteps 999 and 750: the high expert runs the first step, the low one the second (boundary 875)
    assert not np.array_equal(high, both)
    with pytest.raises(UserError, match="Unknown demo expert"):
        run_pipeline_check(demo_workspace, "middle")


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    import backend.models.demo as demo

    def broken(folder, seed):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "write_sample_dataset", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.build_demo_workspace(tmp_path / "ws")
    assert list((tmp_path / "ws").iterdir()) == []


def test_foreign_folder_is_not_overwritten(tmp_path):
    precious = tmp_path / "models" / "vae" / "my_vae.safetensors"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"mine")
    with pytest.raises(UserError, match="has no workspace.json"):
        build_demo_workspace(tmp_path)
    assert precious.read_bytes() == b"mine"


def test_ti2v_demo_is_5b_shaped_with_a_wan22_vae(demo_workspace):
    from diffusers import AutoencoderKLWan

    from backend.models.demo import run_ti2v_pipeline_check
    from backend.models.registry import WAN22_VAE_CONFIG_DIR, detect_model_kind, signature_from_shapes

    shapes = read_checkpoint_shapes(demo_workspace.demo_ti2v / "transformer.safetensors")
    found, real = signature_from_shapes(shapes), MODEL_KINDS["wan2.2-ti2v-5b"].signature
    assert detect_model_kind(shapes) == "demo-ti2v"
    assert (found.in_channels, found.out_channels) == (real.in_channels, real.out_channels) == (48, 48)
    assert found.text_dim == MODEL_KINDS["demo-t2v"].signature.text_dim  # fed by the demo text encoder
    assert (real.dim, real.num_blocks, real.ffn_dim) == (3072, 30, 14336)

    demo_vae = AutoencoderKLWan.load_config(str(demo_workspace.vae_wan22))
    shipped = AutoencoderKLWan.load_config(str(WAN22_VAE_CONFIG_DIR))
    for key in ("z_dim", "is_residual", "patch_size", "in_channels", "out_channels", "scale_factor_spatial",
                "scale_factor_temporal", "temperal_downsample", "latents_mean", "latents_std"):
        assert demo_vae[key] == shipped[key], key
    assert (shipped["z_dim"], shipped["scale_factor_spatial"], shipped["base_dim"]) == (48, 16, 160)
    assert len(shipped["latents_mean"]) == len(shipped["latents_std"]) == 48

    text, image = run_ti2v_pipeline_check(demo_workspace)
    assert text.shape == image.shape == (1, 5, 32, 32, 3)
    assert not np.array_equal(text, image)
    marker = json.loads(demo_workspace.marker.read_text())["demo"]["models"]
    assert (demo_workspace.root / marker["demo-ti2v"]).is_file() and (demo_workspace.root / marker["vae_wan2.2"]).is_dir()

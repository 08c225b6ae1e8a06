"""Wan2.2 TI2V-5B training on the 5B-shaped demo model, with caches made by our cache commands and the demo Wan2.2 VAE:
both tasks train through `backend.train` and lower their own held-out loss; in image-to-video the first latent frame
is clean in the model input and its tokens get timestep 0; mismatched caches and settings are refused."""
from __future__ import annotations

import pytest
import torch

from backend.__main__ import main as backend_main
from backend.adapters.formats import load_lora
from backend.adapters.network import AdapterNetwork
from backend.adapters.network_config import NetworkConfig
from backend.data.cached_dataset import CachedDataset
from backend.errors import UserError
from backend.models.demo import demo_transformer_file
from backend.models.loading import load_transformer
from backend.train.__main__ import main as train_main
from backend.train.loop import flow_matching_loss, train
from backend.train.networks import Denoiser, ExpertPlan
from backend.train.settings import TrainSettings
from backend.train.timesteps import TimestepSampler

from .conftest import DEMO_PRESET

EVAL_TIMESTEPS = (0.2, 0.5, 0.8)
EVAL_NOISE_SEEDS = (1001, 1002)


def _toml(ws, with_images: bool) -> str:
    concept = ws.demo_dataset / "concept_a"
    images = (f"\n[[datasets]]\nimage_directory = \"{(concept / 'images').as_posix()}\"\n"
              "cache_directory = \"cache/images\"\n") if with_images else ""
    return ("[general]\nresolution = [64, 64]\ncaption_extension = \".txt\"\nbatch_size = 1\nenable_bucket = true\n"
            f"{images}\n[[datasets]]\nvideo_directory = \"{(concept / 'videos').as_posix()}\"\n"
            "cache_directory = \"cache/videos\"\ntarget_frames = [17]\nframe_extraction = \"head\"\n")


@pytest.fixture(scope="module")
def ti2v_data(demo_workspace, tmp_path_factory):
    """Concept A cached for demo-ti2v by the cache commands: videos.toml (the 17-frame clips) and mixed.toml (the
    images too); both share the video cache."""
    folder = tmp_path_factory.mktemp("ti2v_data")
    paths = {}
    for name, with_images in (("videos", False), ("mixed", True)):
        path = folder / f"{name}.toml"
        path.write_text(_toml(demo_workspace, with_images), encoding="utf-8")
        common = ["--dataset_config", str(path), "--workspace", str(demo_workspace.root)]
        assert backend_main(["cache", "latents", *common, "--model_kind", "demo-ti2v"]) == 0
        assert backend_main(["cache", "text", *common]) == 0
        paths[name] = path
    return paths


def _model(ws):
    return load_transformer(demo_transformer_file(ws, "demo-ti2v"), "demo-ti2v").eval()


def _expected_timesteps(t: torch.Tensor, frames: int, rows: int, columns: int) -> torch.Tensor:
    """Token by token, in the patch embedding's order (frame, row, column): 0 on frame 0, t·1000 elsewhere."""
    values = [[0.0 if frame == 0 else float(t_b) * 1000.0
               for frame in range(frames) for _ in range(rows // 2) for _ in range(columns // 2)] for t_b in t]
    return torch.tensor(values)


def held_out_loss(model, dataset: CachedDataset, i2v: bool) -> float:
    """Mean flow-matching loss over every cached item at fixed timesteps and noise (seeds unseen in training);
    in image-to-video the first latent frame is clean at timestep 0 and only the other frames count."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in dataset.epoch_batches(0):
            data = dataset.load_batch(batch)
            x0, text = data["latents"], data["text_embeds"]
            _, _, frames, rows, columns = x0.shape
            for seed in EVAL_NOISE_SEEDS:
                noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
                for value in EVAL_TIMESTEPS:
                    t = torch.full((x0.shape[0],), value)
                    x_t = (1 - value) * x0 + value * noise
                    if i2v:
                        x_t[:, :, 0] = x0[:, :, 0]
                        timestep = _expected_timesteps(t, frames, rows, columns)
                    else:
                        timestep = t * 1000
                    v = model(hidden_states=x_t, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
                    first = 1 if i2v else 0
                    total += ((v - (noise - x0))[:, :, first:] ** 2).mean().item()
                    count += 1
    return total / count


@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_ti2v_demo_trains_in_both_modes_through_backend_train(demo_workspace, ti2v_data, tmp_path, mode, capsys):
    toml = ti2v_data["videos"]
    code = train_main(["--config", str(DEMO_PRESET), "--workspace", str(demo_workspace.root),
                       "--model_kind", "demo-ti2v", "--ti2v_mode", mode, "--dataset_config", str(toml),
                       "--output_dir", str(tmp_path), "--output_name", f"ti2v-{mode}"])
    assert code == 0, capsys.readouterr().err
    lora = load_lora(tmp_path / f"ti2v-{mode}.safetensors")
    assert lora.metadata["ss_steps"] == "30" and len(lora.modules) == 80  # 8 blocks x 10 linears
    assert lora.metadata["loraid_studio.ti2v_mode"] == mode

    dataset = CachedDataset.from_file(toml)
    model = _model(demo_workspace)
    before = held_out_loss(model, dataset, i2v=mode == "i2v")
    AdapterNetwork.from_weights(model, lora.tensors, lora.flags).inject()
    after = held_out_loss(model, dataset, i2v=mode == "i2v")
    assert after < 0.97 * before, (before, after)


def test_i2v_model_input_keeps_frame_0_clean_at_timestep_0(demo_workspace, ti2v_data):
    """The real loss function and denoiser on two cached clips; what reaches the transformer is recorded by hooks and
    compared with the per-token timesteps built token by token, and with diffusers' TI2V pipeline formula."""
    dataset = CachedDataset.from_file(ti2v_data["videos"])
    batch = dataset.load_batch(dataset.items[:2])
    x0 = batch["latents"]
    _, _, frames, rows, columns = x0.shape
    assert x0.shape[1] == 48 and frames == 5 and (rows, columns) == (4, 4)  # 17 frames of 64x64: 5x4x4 latents

    model = _model(demo_workspace)
    network = AdapterNetwork.create(model, NetworkConfig.from_network_args(4, 4.0, []))
    network.inject()
    denoiser = Denoiser({"single": model}, {"single": network}, ExpertPlan((None,), None))
    seen = {}
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    model.register_forward_hook(lambda m, args, output: seen.update(output=output[0]))

    settings = TrainSettings(model_kind="demo-ti2v", ti2v_mode="i2v")
    sampler = TimestepSampler("uniform")
    loss = flow_matching_loss(denoiser, batch, sampler, torch.Generator().manual_seed(7), settings, "cpu")

    replay = torch.Generator().manual_seed(7)  # the same draws, in the loss function's order
    noise = torch.randn(x0.shape, generator=replay)
    t = sampler.sample(x0.shape[0], replay)
    assert t[0] != t[1]
    timestep, hidden = seen["timestep"], seen["hidden_states"]
    assert timestep.shape == (2, frames * (rows // 2) * (columns // 2))
    assert torch.allclose(timestep, _expected_timesteps(t, frames, rows, columns), atol=1e-4)
    mask = torch.ones(1, 1, frames, rows, columns)
    mask[:, :, 0] = 0  # WanImageToVideoPipeline(expand_timesteps=True): first_frame_mask[0][0][:, ::2, ::2] * t
    pipeline_formula = torch.stack([(mask[0][0][:, ::2, ::2] * t_b * 1000).flatten() for t_b in t])
    assert torch.allclose(timestep, pipeline_formula, atol=1e-4)

    assert torch.equal(hidden[:, :, 0], x0[:, :, 0])  # frame 0 clean, bit for bit
    noised = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
    assert torch.allclose(hidden[:, :, 1:], noised[:, :, 1:], atol=1e-6)
    assert not torch.allclose(hidden[:, :, 0], noised[:, :, 0])

    output = seen["output"]
    expected = ((output[:, :, 1:] - (noise - x0)[:, :, 1:]) ** 2).mean()  # only the noised frames
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert not torch.allclose(loss, ((output - (noise - x0)) ** 2).mean(), rtol=1e-3)


def test_one_timestep_equals_the_same_timestep_on_every_token(demo_workspace, ti2v_data):
    """Text-to-video trains with one timestep per clip; generation (expand_timesteps) gives it to every token."""
    dataset = CachedDataset.from_file(ti2v_data["videos"])
    data = dataset.load_batch(dataset.items[:1])
    x0, text = data["latents"], data["text_embeds"]
    model = _model(demo_workspace)
    with torch.no_grad():
        one = model(hidden_states=x0, timestep=torch.tensor([640.0]), encoder_hidden_states=text,
                    return_dict=False)[0]
        every = model(hidden_states=x0, timestep=torch.full((1, 20), 640.0), encoder_hidden_states=text,
                      return_dict=False)[0]
    assert torch.allclose(one, every, atol=1e-5)


def test_mismatched_caches_and_settings_are_refused(demo_workspace, demo_settings, ti2v_data, tmp_path):
    base = {"model_kind": "demo-ti2v", "output_dir": str(tmp_path), "max_train_steps": 1}
    with pytest.raises(UserError, match=r"ti2v_mode=i2v trains on the frames after the first, but a_\d+ has 1 frame"):
        train(demo_settings.with_overrides({**base, "ti2v_mode": "i2v", "dataset_config": str(ti2v_data["mixed"])}),
              demo_workspace, log=lambda *_: None)
    with pytest.raises(UserError, match="ti2v_mode=i2v is for Wan2.2 TI2V-5B"):
        train(demo_settings.with_overrides({"ti2v_mode": "i2v", "output_dir": str(tmp_path)}), demo_workspace,
              log=lambda *_: None)
    # concept A's own caches (conftest) come from the Wan2.1 demo VAE: 16 channels
    with pytest.raises(UserError, match="have 16 channels, but tiny demo TI2V .* takes 48; cache the dataset again .*"
                                        "--model_kind demo-ti2v --workspace DIR`"):
        train(demo_settings.with_overrides(base), demo_workspace, log=lambda *_: None)
    assert not list(tmp_path.iterdir())


def test_the_train_form_names_ti2v_problems_field_by_field(demo_workspace, ti2v_data):
    from backend.config.train_checks import check_train_settings

    check = check_train_settings({"model_kind": "demo-t2v", "ti2v_mode": "i2v",
                                  "dataset_config": str(ti2v_data["videos"])}, demo_workspace)
    assert check.errors["ti2v_mode"] == ("TI2V task (ti2v_mode) i2v is for Wan2.2 TI2V-5B and the demo TI2V model; "
                                         "pick t2v for tiny demo T2V.")
    deep = check_train_settings({"model_kind": "demo-ti2v", "ti2v_mode": "i2v",
                                 "dataset_config": str(ti2v_data["mixed"])}, demo_workspace, deep=True)
    assert "ti2v_mode" not in deep.errors
    assert "trains on the frames after the first" in deep.errors["dataset_config"]
    assert check_train_settings({"model_kind": "demo-ti2v", "ti2v_mode": "i2v",
                                 "dataset_config": str(ti2v_data["videos"])}, demo_workspace, deep=True).ok

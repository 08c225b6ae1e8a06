"""What a form's generation request becomes before any job: LoRA summaries from headers, the overlap guard per
transformer (as the engine places files), model choices and their arguments, the CLI arguments (parsed back by the
generate command's own parser), results listed from sidecars, and a request rebuilt from a sidecar."""
from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from backend.adapters.formats import save_lora
from backend.adapters.metadata import build_metadata
from backend.errors import UserError
from backend.generate import cli
from backend.generate.lora_catalog import catalog, check_overlaps, conflict_lines, picker_value, resolve_lora, \
    summarize
from backend.generate.model_options import ModelPick, model_options, read_model
from backend.generate.outputs import output_stem, write_result
from backend.generate.options import LoraOptions, RunOptions
from backend.generate.request import GenerateRequest, LoraPick
from backend.generate.results import list_results
from backend.generate.settings import GenerateSettings
from backend.generate.start_images import keep_start_image
from backend.loraid.allocation import allocate
from backend.models.demo import TRANSFORMER_FILE, expert_file


def test_summaries_come_from_the_headers(demo_ws, lora_files):
    one = summarize(lora_files.by_id[1])
    assert (one.loraid, one.blocks, one.expert, one.rank) == (1, (0, 1), None, 4)
    assert one.describe() == "LORAID 1 · blocks 0-1 · lora rank 4"
    assert summarize(lora_files.by_id[3]).describe() == "LORAID 3 · blocks 1-2 · lora rank 4"
    assert summarize(lora_files.full).describe() == "no LORAID · blocks 0-7 · lora rank 4"
    assert [s.name for s in catalog(demo_ws.loras)][:3] == ["loraid1.safetensors", "loraid2.safetensors",
                                                            "loraid3.safetensors"]
    with pytest.raises(UserError, match="does not exist; pick a file from the list or check the path"):
        summarize(demo_ws.loras / "nope.safetensors")


def test_overlap_guard_names_the_shared_blocks_unless_allowed(lora_files):
    disjoint = [lora_files.by_id[1], lora_files.by_id[2]]
    assert conflict_lines(disjoint, ["main"]) == []
    overlapping = [lora_files.by_id[1], lora_files.by_id[3]]
    (line,) = conflict_lines(overlapping, ["main"])
    assert line.startswith("loraid1.safetensors and loraid3.safetensors both change block 1 (modules ")
    with pytest.raises(UserError, match=r"both change block 1 .*; tick “Allow overlap” to apply them anyway"):
        check_overlaps(overlapping, ["main"], allow_overlap=False)
    assert check_overlaps(overlapping, ["main"], allow_overlap=True) == [line]


def test_on_an_expert_pair_files_of_different_experts_never_conflict(lora_files, tmp_path):
    tensors = load_file(lora_files.by_id[1])  # blocks 0-1
    paths = {}
    for expert in ("high", "low"):
        allocation = allocate(1, 8, 2, expert=expert, model="demo-a14b")
        metadata = build_metadata("lora", 4, 2.0, [], {}, "demo-a14b", loraid=1, allocation=allocation.to_metadata())
        paths[expert] = save_lora(tmp_path / f"{expert}.safetensors", tensors, metadata, "fp32")
    assert summarize(paths["high"]).describe() == "LORAID 1 · blocks 0-1 · lora rank 4 · high-noise expert"
    assert conflict_lines(list(paths.values()), ["high", "low"]) == []
    (line,) = conflict_lines(list(paths.values()), ["main"])  # on one transformer they would share blocks 0-1
    assert "both change blocks 0-1" in line


def test_picker_values_resolve_names_in_loras_and_paths(demo_ws, lora_files):
    root, loras = demo_ws.root, demo_ws.loras
    assert resolve_lora(root, loras, "loraid1.safetensors") == lora_files.by_id[1].resolve()
    assert resolve_lora(root, loras, "full.safetensors") == lora_files.full.resolve()  # relative to the workspace
    assert picker_value(root, loras, lora_files.by_id[1]) == "loraid1.safetensors"
    assert picker_value(root, loras, lora_files.full) == "full.safetensors"
    assert picker_value(root, loras, root.parent / "elsewhere.safetensors") == str(root.parent /
                                                                                   "elsewhere.safetensors")


def test_model_options_and_picks(demo_ws, tmp_path):
    ws = type(demo_ws)(tmp_path / "ws")
    shutil.copytree(demo_ws.models, ws.models)
    merged = ws.outputs / "merged"
    merged.mkdir(parents=True)
    shutil.copy(expert_file(ws, "high"), merged / "x-high_noise.safetensors")
    shutil.copy(expert_file(ws, "low"), merged / "x-low_noise.safetensors")
    shutil.copy(ws.demo_t2v / TRANSFORMER_FILE, merged / "x-low_noise-2.safetensors")
    values = [option.value for option in model_options(ws)]
    assert values == ["demo-t2v", "demo-a14b", "demo-ti2v",
                      "outputs/merged/x-high_noise.safetensors | outputs/merged/x-low_noise.safetensors",
                      "outputs/merged/x-low_noise-2.safetensors"]
    assert read_model(ws, "demo-ti2v").task == "ti2v"
    pair = read_model(ws, values[3])
    assert (pair.model_kind, pair.roles, pair.task) == ("demo-a14b", ["high", "low"], "t2v")
    single = read_model(ws, values[4])
    assert (single.model_kind, single.roles, single.arguments()) == (
        None, ["main"], ["--dit", str((merged / "x-low_noise-2.safetensors").resolve())])
    assert read_model(ws, "demo-a14b").arguments() == ["--model=demo-a14b"]
    with pytest.raises(UserError, match="but Wan2.1 T2V 14B was expected"):
        read_model(ws, values[4], "wan2.1-t2v-14b")
    with pytest.raises(UserError, match="Unknown model type `wan2.1-t2v-14`"):
        read_model(ws, values[4], "wan2.1-t2v-14")
    with pytest.raises(UserError, match="The model names 3 files; give one checkpoint, or two for an A14B pair"):
        read_model(ws, " | ".join([values[4]] * 3))


def _parsed(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert arguments[0] == "generate"
    return parser.parse_args(arguments[1:])


def test_arguments_are_what_the_generate_command_parses(demo_ws, lora_files):
    settings = GenerateSettings(prompt="-a prompt that starts with a dash", negative_prompt="blurry, --low", seed=9,
                                steps=3, guidance_scale=4.0, guidance_scale_2=2.5, flow_shift=5.0, sampler="euler",
                                width=48, height=32, frames=5, fps=8)
    request = GenerateRequest(ModelPick(demo="demo-a14b"), settings,
                              loras=(LoraPick(lora_files.by_id[1], 1.0), LoraPick(lora_files.by_id[2], -0.25)),
                              lora_options=LoraOptions(hooked=True), outputs=RunOptions(save_latents=True))
    assert request.check() == []
    args = _parsed(request.arguments(demo_ws.root))
    assert (args.prompt, args.negative_prompt, args.seed, args.steps, args.guidance_scale, args.guidance_scale_2,
            args.flow_shift, args.sampler, args.width, args.height, args.frames, args.fps) == (
        settings.prompt, settings.negative_prompt, 9, 3, 4.0, 2.5, 5.0, "euler", 48, 32, 5, 8)
    assert (args.model, args.hooked, args.save_latents, args.allow_overlap, args.fp8) == (
        "demo-a14b", True, True, False, False)
    assert args.lora == [str(lora_files.by_id[1].resolve()), str(lora_files.by_id[2].resolve())]
    assert args.multiplier == [1.0, -0.25]
    random_seed = GenerateRequest(ModelPick(demo="demo-t2v"), settings.with_overrides(guidance_scale_2=None),
                                  random_seed=True)
    assert _parsed(random_seed.arguments(demo_ws.root)).seed is None


def test_results_are_listed_newest_first_and_rebuild_their_request(demo_ws, lora_files, tmp_path):
    outputs = tmp_path / "outputs"
    settings = GenerateSettings(prompt="a red ball", seed=5, width=32, height=32, frames=5, steps=2)
    record = {"settings": settings.to_dict(), "seed": 5, "model": {"model": "demo-t2v", "dit": []},
              "loras": [{"path": str(lora_files.by_id[2]), "multiplier": 0.7}], "lora_mode": "merged",
              "memory": {"cpu_offload": False, "fp8": False, "vae_tiling": True}}
    first = write_result(output_stem(outputs, 5), np.zeros((5, 32, 32, 3)), record)
    second = write_result(output_stem(outputs, 6), np.ones((1, 32, 32, 3)),
                          {**record, "settings": {**settings.to_dict(), "frames": 1, "seed": 6}, "seed": 6})
    (outputs / "broken.json").write_text("{not json")
    (outputs / "other.json").write_text(json.dumps({"no": "settings"}))
    results = list_results(outputs)
    assert [str(r.media) for r in results] == [second["image"], first["video"]]
    assert results[1].is_video and not results[0].is_video
    assert results[1].caption == "seed 5 · 1 LoRA · a red ball"

    rebuilt = GenerateRequest.from_record(results[1].record)
    assert rebuilt.settings == settings
    assert rebuilt.model == ModelPick(demo="demo-t2v")
    assert rebuilt.loras == (LoraPick(lora_files.by_id[2], 0.7),)
    assert (rebuilt.hooked, rebuilt.memory.vae_tiling, rebuilt.save_latents) == (False, True, False)
    with pytest.raises(UserError, match="incomplete or damaged"):
        GenerateRequest.from_record({"settings": {"prompt": "x", "frames": "many", "bogus": 1}, "loras": [{}]})


def test_start_images_are_kept_once_per_content(tmp_path):
    from PIL import Image

    upload = tmp_path / "upload" / "cat.PNG"
    upload.parent.mkdir()
    Image.new("RGB", (8, 8), "red").save(upload, format="png")
    kept = keep_start_image(tmp_path / "outputs", upload)
    assert kept.parent == (tmp_path / "outputs" / "start_images").resolve() and kept.suffix == ".png"
    assert kept.read_bytes() == upload.read_bytes()
    assert keep_start_image(tmp_path / "outputs", upload) == kept
    assert keep_start_image(tmp_path / "outputs", kept) == kept
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(UserError, match="notes.txt is not an image the generator reads"):
        keep_start_image(tmp_path / "outputs", notes)

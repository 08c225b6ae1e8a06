"""Training on a cache directory in the layout musubi-tuner's cache scripts write, taken as it is (no re-caching).

The cache is built here from musubi-tuner's documented names (DESIGN.md §9): latents
`<stem>_<start>-<frames>_<W>x<H>_wan.safetensors` / `<stem>_<W>x<H>_wan.safetensors` (W×H the original size) with
`latents_<F>x<H>x<W>_<dtype>` [C, F, H, W], text `<stem>_wan_te.safetensors` with `varlen_t5_<dtype>` [L, D], and
musubi's metadata (`architecture`, `width`, `height`, `format_version`, `frame_count`); no manifest, no fingerprint.
The tensors are the demo concept's real VAE / UMT5 outputs, so the run trains on meaningful data.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from backend.data.cache_files import load_latent_file, load_text_file, read_manifest, read_metadata
from backend.data.cached_dataset import CachedDataset
from backend.jobs.protocol import JobContext
from backend.train.loop import train


def _musubi_cache(ours: Path, media: Path, cache: Path) -> set[str]:
    """Re-save our cache of one dataset under musubi-tuner's names, tensors and metadata; returns the file names."""
    cache.mkdir(parents=True)
    written = set()
    for entry in read_manifest(ours)["entries"]:
        meta = read_metadata(ours / entry.latent_file)
        latents = load_latent_file(ours / entry.latent_file)["latents"]
        channels, frames, height, width = latents.shape
        size = f"{int(meta['width']):04d}x{int(meta['height']):04d}"
        window = f"_{entry.start:05d}-{entry.frames:03d}" if entry.kind == "video" else ""
        name = f"{entry.key}{window}_{size}_wan.safetensors"
        musubi_meta = {"architecture": "wan", "width": meta["width"], "height": meta["height"],
                       "format_version": "1.0.1"}
        if entry.kind == "video":
            musubi_meta["frame_count"] = str(entry.frames)
        dtype = str(latents.dtype).removeprefix("torch.")
        save_file({f"latents_{frames}x{height}x{width}_{dtype}": latents.contiguous()}, str(cache / name), musubi_meta)
        text = load_text_file(ours / f"{entry.key}_wan_te.safetensors")
        save_file({f"varlen_t5_{str(text.dtype).removeprefix('torch.')}": text.contiguous()},
                  str(cache / f"{entry.key}_wan_te.safetensors"), {"architecture": "wan", "format_version": "1.0.1"})
        written |= {name, f"{entry.key}_wan_te.safetensors"}
    shutil.copytree(ours.parent.parent / media.name, media)
    return written


def test_a_musubi_cache_directory_trains_without_recaching(demo_workspace, demo_settings, tmp_path):
    concept = demo_workspace.demo_dataset / "concept_a"
    root = tmp_path / "from_musubi"
    files = {}
    for kind in ("images", "videos"):
        files[kind] = _musubi_cache(concept / "cache" / kind, root / kind, root / "cache" / kind)
    toml = root / "dataset.toml"
    toml.write_text(f'[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\nbatch_size = 1\n'
                    f'enable_bucket = true\n\n'
                    f'[[datasets]]\nimage_directory = "{root / "images"}"\ncache_directory = "{root / "cache/images"}"\n\n'
                    f'[[datasets]]\nvideo_directory = "{root / "videos"}"\ncache_directory = "{root / "cache/videos"}"\n'
                    f'target_frames = [1, 17]\nframe_extraction = "head"\n')
    before = {kind: {p.name: p.stat().st_mtime_ns for p in (root / "cache" / kind).iterdir()} for kind in files}

    lines: list[str] = []
    settings = demo_settings.with_overrides({"output_dir": str(tmp_path / "out"), "dataset_config": str(toml),
                                             "max_train_steps": 3})
    status = train(settings, demo_workspace, JobContext(events_path=tmp_path / "events.jsonl"), log=lines.append)
    assert status == "succeeded", "\n".join(lines)
    assert (tmp_path / "out" / "demo-concept-a.safetensors").is_file()
    adopted = [line for line in lines if "adopted musubi-tuner's cache" in line]
    assert len(adopted) == 2 and "no re-caching" in adopted[0]
    for kind, names in files.items():
        folder = root / "cache" / kind
        after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
        assert set(after) == set(before[kind]) | {"cache_manifest.json"}  # nothing re-cached, only the manifest
        assert all(after[name] == before[kind][name] for name in names)
        manifest = json.loads((folder / "cache_manifest.json").read_text())
        assert manifest["adopted"] == "musubi-tuner"
        assert {entry["latent_file"] for entry in manifest["entries"]} == {n for n in names if not n.endswith("_te.safetensors")}

    # The second run reads the recorded manifest, and says nothing about adopting again.
    again = CachedDataset.from_file(toml)
    latents = [n for names in files.values() for n in names if not n.endswith("_te.safetensors")]
    assert again.notes == [] and len(again.items) == len(latents) == 12
    assert adopted[1].endswith("adopted musubi-tuner's cache (6 latent file(s) of 3 of 3 item(s), no re-caching).")

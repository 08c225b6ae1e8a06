"""The demo dataset: two visually distinct concepts drawn procedurally, as images and short H.264 clips with
captions, plus musubi-tuner dataset TOML files. Same seed -> byte-identical files, no network.

  <folder>/concept_a/  "loraidA": a red ball on warm backgrounds, bouncing in the clips
  <folder>/concept_b/  "loraidB": a blue cube on cool backgrounds, sliding in the clips
  each with images/*.png + .txt, videos/*.mp4 + .txt and dataset.toml; <folder>/dataset.toml uses both.
Paths inside the TOML files are relative to the folder of the TOML file.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.fileio import atomic_write_bytes, atomic_write_text

IMAGE_SIZES = ((64, 64), (64, 64), (64, 64), (64, 64), (96, 64), (64, 96))  # (width, height): one per image
CLIPS_PER_CONCEPT = 3
CLIP_FRAMES = 17  # 4k+1 frames, as Wan's VAE wants
CLIP_SIZE = (64, 64)
CLIP_FPS = 16
RESOLUTION = (64, 64)


@dataclass(frozen=True)
class Concept:
    folder: str
    trigger: str
    letter: str
    image_captions: tuple[str, ...]
    clip_captions: tuple[str, ...]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # top and bottom colour of the gradient
    subject_colour: tuple[int, int, int]


CONCEPTS = (
    Concept("concept_a", "loraidA", "a",
            ("a red ball on a warm orange background", "a glossy red ball resting on a sunny floor",
             "a small red ball in warm light", "a bright red ball against a golden wall"),
            ("a red ball bouncing on a warm background", "a red ball bouncing up and down in warm light",
             "a glossy red ball bouncing across a sunny floor"),
            ((250, 228, 180), (236, 150, 70)), (214, 38, 36)),
    Concept("concept_b", "loraidB", "b",
            ("a blue cube on a cool grey background", "a solid blue cube standing on a cold floor",
             "a small blue cube in pale blue light", "a dark blue cube against a teal wall"),
            ("a blue cube sliding across a cool floor", "a blue cube sliding from side to side in cold light",
             "a solid blue cube sliding over a teal floor"),
            ((200, 216, 236), (96, 150, 176)), (36, 72, 212)),
)


def caption_sentences() -> list[str]:
    """Every caption the dataset can contain, trigger word first (a tokenizer is trained on these)."""
    return [f"{c.trigger}, {text}" for c in CONCEPTS for text in c.image_captions + c.clip_captions]


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float64) + rng.integers(-amount, amount + 1, size=3), 0, 255)


def _background(concept: Concept, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    top, bottom = (_jitter(c, rng, 12) for c in concept.background)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    return np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).copy()


def _draw_ball(canvas: np.ndarray, colour: np.ndarray, cx: float, cy: float, radius: float) -> None:
    ys, xs = np.mgrid[0:canvas.shape[0], 0:canvas.shape[1]] + 0.5
    inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2
    highlight = np.hypot(xs - (cx - radius / 3), ys - (cy - radius / 3)) / (2 * radius)
    shade = np.clip(1.25 - highlight, 0.55, 1.25)[..., None]
    canvas[inside] = np.clip(colour * shade, 0, 255)[inside]


def _draw_cube(canvas: np.ndarray, colour: np.ndarray, x0: float, y0: float, side: float) -> None:
    ys, xs = np.mgrid[0:canvas.shape[0], 0:canvas.shape[1]] + 0.5
    depth = side / 3
    top = (ys >= y0 - depth) & (ys < y0) & (xs >= x0 + (y0 - ys)) & (xs < x0 + side + (y0 - ys))
    right = (xs >= x0 + side) & (xs < x0 + side + depth) & (ys >= y0 - (xs - x0 - side)) \
        & (ys < y0 + side - (xs - x0 - side))
    front = (xs >= x0) & (xs < x0 + side) & (ys >= y0) & (ys < y0 + side)
    canvas[top] = np.clip(colour * 1.35 + 20, 0, 255)
    canvas[right] = colour * 0.6
    canvas[front] = colour


def _draw(concept: Concept, canvas: np.ndarray, colour: np.ndarray, x: float, y: float, size: float) -> None:
    if concept.letter == "a":
        _draw_ball(canvas, colour, x, y, size / 2)
    else:
        _draw_cube(canvas, colour, x - size / 2, y - size / 2, size)


def render_image(concept: Concept, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    canvas = _background(concept, rng, width, height)
    size = rng.uniform(0.3, 0.45) * min(width, height)
    x = rng.uniform(size * 0.7, width - size * 0.7)
    y = rng.uniform(size * 0.7, height - size * 0.7)
    _draw(concept, canvas, _jitter(concept.subject_colour, rng, 20), x, y, size)
    return canvas.round().astype(np.uint8)


def render_clip(concept: Concept, rng: np.random.Generator, frames: int, width: int, height: int) -> list[np.ndarray]:
    """A ball bouncing (concept a) or a cube sliding (concept b), `frames` RGB frames."""
    background = _background(concept, rng, width, height)
    colour = _jitter(concept.subject_colour, rng, 20)
    size = rng.uniform(0.28, 0.36) * min(width, height)
    floor = height - size * 0.6
    start = rng.uniform(size * 0.7, width * 0.4)  # travel across at least a fifth of the frame
    end = rng.uniform(width * 0.6, width - size * 0.7)
    if rng.integers(2):
        start, end = end, start
    bounces = int(rng.integers(1, 3))
    out = []
    for index in range(frames):
        phase = index / (frames - 1)
        x = start + (end - start) * phase
        if concept.letter == "a":
            y = floor - abs(np.sin(np.pi * bounces * phase)) * (height * 0.55)
        else:
            y = floor - size * 0.1
        canvas = background.copy()
        _draw(concept, canvas, colour, x, y, size)
        out.append(canvas.round().astype(np.uint8))
    return out


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def encode_mp4(frames: list[np.ndarray], fps: int = CLIP_FPS) -> bytes:
    """H.264 in MP4 through imageio-ffmpeg's ffmpeg, single-threaded and bit-exact so the bytes repeat exactly.

    (PyAV's in-process libx264 gave different bytes from run to run even with one thread; a separate ffmpeg
    process with the same settings does not.)
    """
    import subprocess
    import tempfile

    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    with tempfile.TemporaryDirectory(prefix="loraid-mp4-") as tmp:
        out = Path(tmp) / "clip.mp4"
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
                   "-c:v", "libx264", "-preset", "medium", "-crf", "16", "-pix_fmt", "yuv420p",
                   "-threads", "1", "-x264-params", "threads=1:sliced-threads=0",
                   "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1",
                   "-movflags", "+faststart", "-f", "mp4", str(out)]
        raw = np.ascontiguousarray(np.stack(frames)).tobytes()
        result = subprocess.run(command, input=raw, capture_output=True)
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace")[-500:]
            raise RuntimeError(f"ffmpeg failed to encode a sample clip: {detail}")
        return out.read_bytes()


def _general_toml() -> str:
    return (f"[general]\nresolution = [{RESOLUTION[0]}, {RESOLUTION[1]}]\ncaption_extension = \".txt\"\n"
            "batch_size = 1\nenable_bucket = true\nbucket_no_upscale = false\n")


def _datasets_toml(prefix: str) -> str:
    return (f"\n[[datasets]]\nimage_directory = \"{prefix}images\"\ncache_directory = \"{prefix}cache/images\"\n"
            "num_repeats = 1\n"
            f"\n[[datasets]]\nvideo_directory = \"{prefix}videos\"\ncache_directory = \"{prefix}cache/videos\"\n"
            f"target_frames = [1, {CLIP_FRAMES}]\nframe_extraction = \"head\"\nsource_fps = {float(CLIP_FPS)}\n"
            "num_repeats = 1\n")


def dataset_toml(concept_folders: list[str], title: str) -> str:
    """musubi-tuner dataset config for these concept folders ("" = the TOML's own folder)."""
    header = (f"# {title}\n# musubi-tuner dataset config; relative paths are relative to this file's folder here. "
              f"musubi-tuner resolves them against its\n# working directory: the Train tab's musubi command reads the "
              f"dataset.musubi.toml copy with absolute paths it writes beside this file.\n")
    body = "".join(_datasets_toml(f"{folder}/" if folder else "") for folder in concept_folders)
    return header + _general_toml() + body


def _write_concept(folder: Path, concept: Concept, rng: np.random.Generator) -> list[Path]:
    written = []
    for index, (width, height) in enumerate(IMAGE_SIZES):
        stem = folder / "images" / f"{concept.letter}_{index:03d}"
        caption = concept.image_captions[int(rng.integers(len(concept.image_captions)))]
        image = render_image(concept, rng, width, height)
        written.append(atomic_write_bytes(stem.with_suffix(".png"), encode_png(image)))
        written.append(atomic_write_text(stem.with_suffix(".txt"), f"{concept.trigger}, {caption}\n"))
    for index in range(CLIPS_PER_CONCEPT):
        stem = folder / "videos" / f"{concept.letter}_clip_{index:03d}"
        caption = concept.clip_captions[index % len(concept.clip_captions)]
        frames = render_clip(concept, rng, CLIP_FRAMES, *CLIP_SIZE)
        written.append(atomic_write_bytes(stem.with_suffix(".mp4"), encode_mp4(frames)))
        written.append(atomic_write_text(stem.with_suffix(".txt"), f"{concept.trigger}, {caption}\n"))
    written.append(atomic_write_text(folder / "dataset.toml",
                                     dataset_toml([""], f"LORAID demo dataset, {concept.folder} ({concept.trigger})")))
    return written


def write_sample_dataset(folder: str | Path, seed: int = 0) -> list[Path]:
    """Write both concepts and the TOML files under `folder`; returns every file written."""
    folder = Path(folder)
    written = []
    for offset, concept in enumerate(CONCEPTS):
        rng = np.random.default_rng([seed, offset])
        written += _write_concept(folder / concept.folder, concept, rng)
    names = [c.folder for c in CONCEPTS]
    both = dataset_toml(names, "LORAID demo dataset, both concepts")
    written.append(atomic_write_text(folder / "dataset.toml", both))
    return written

"""Router hints from caption tags or a dataset's expert_label, and ROI masks on the latent grid."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.data.dataset_config import parse_dataset_toml
from backend.errors import UserError
from backend.moe.labels import Labeller, held_out, load_mask
from backend.moe.losses import roi_weights, weighted_flow_error


@dataclass(frozen=True)
class Item:
    dataset_index: int
    caption: str
    key: str = "k"


def _datasets(tmp_path: Path, label_b: str = "blue"):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    text = ('[general]\nresolution = [64, 64]\n[[datasets]]\nimage_directory = "a"\nmask_directory = "masks"\n'
            f'[[datasets]]\nimage_directory = "b"\nexpert_label = "{label_b}"\n')
    return parse_dataset_toml(text, base_dir=tmp_path).resolved()


def test_labels_come_from_the_dataset_field_then_a_whole_word_caption_tag(tmp_path):
    datasets = _datasets(tmp_path)
    assert datasets[0].mask_directory == tmp_path / "masks" and datasets[1].expert_label == "blue"
    labeller = Labeller(["red", "blue"], ["loraidA", "loraidB"], datasets)
    assert labeller.label(Item(1, "loraidA, a red ball")) == 0
    assert labeller.label(Item(1, "LORAIDB: a cube")) == 1  # case-insensitive
    assert labeller.label(Item(1, "loraidAB a thing")) is None  # not a whole word
    assert labeller.label(Item(1, "loraidA and loraidB")) is None  # two tags: no label
    assert labeller.label(Item(2, "loraidA, a red ball")) == 1  # the dataset's expert_label wins
    hint = labeller.one_hot([Item(1, "loraidB"), Item(1, "nothing")])
    assert hint.tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_an_expert_label_that_names_no_expert_is_refused(tmp_path):
    with pytest.raises(UserError, match="expert_label `green` is not one of the experts"):
        Labeller(["red", "blue"], ["a", "b"], _datasets(tmp_path, "green"))


def test_held_out_split_is_stable_and_near_the_fraction():
    keys = [f"item_{i}" for i in range(400)]
    chosen = [k for k in keys if held_out(k, 0.25)]
    assert chosen == [k for k in keys if held_out(k, 0.25)] and 70 < len(chosen) < 130
    assert not any(held_out(k, 0.0) for k in keys)


def test_mask_is_resized_to_the_latent_grid_and_weights_the_loss_inside(tmp_path):
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:32, :32] = 255  # the top-left quarter is the region of interest
    Image.fromarray(mask).save(tmp_path / "clip.png")
    latent = load_mask(tmp_path, "clip", (16, 3, 8, 8))
    assert latent.shape == (1, 3, 8, 8)
    assert torch.equal(latent[0, 0, :4, :4], torch.ones(4, 4)) and float(latent[0, :, 4:, :].sum()) == 0
    assert load_mask(tmp_path, "missing", (16, 3, 8, 8)) is None

    weights = roi_weights(latent[None], inside=4.0)
    assert float(weights.mean()) == pytest.approx(1.0)
    assert float(weights[0, 0, 0, 0, 0] / weights[0, 0, 0, 7, 7]) == pytest.approx(4.0)
    prediction, target = torch.zeros(1, 16, 3, 8, 8), torch.zeros(1, 16, 3, 8, 8)
    target[..., :4, :4] = 1.0  # an error only inside the mask counts 4x more than the same error outside
    inside = weighted_flow_error(prediction, target, weights)
    target = torch.zeros_like(target)
    target[..., 4:, 4:] = 1.0
    assert float(inside) == pytest.approx(4.0 * float(weighted_flow_error(prediction, target, weights)))

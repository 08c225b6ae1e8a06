"""Frame extraction against the worked examples of musubi-tuner's dataset guide (a 40-frame clip), by hand."""
from __future__ import annotations

import pytest

from backend.data.frames import extract_windows, resample_indices, window_starts

# (mode, target_frames, options, expected [(start, length)]) for a clip of 40 frames, worked out by hand.
FORTY_FRAMES = [
    ("head", [1, 13, 25], {}, [(0, 1), (0, 13), (0, 25)]),
    # chunk: 13-frame chunks start at 0, 13, 26 (26+13 = 39 <= 40, 39+13 > 40); one 25-frame chunk at 0
    ("chunk", [13, 25], {}, [(0, 13), (13, 13), (26, 13), (0, 25)]),
    # slide, stride 10: starts 0..(40-length) step 10
    ("slide", [1, 13, 25], {"frame_stride": 10},
     [(0, 1), (10, 1), (20, 1), (30, 1), (0, 13), (10, 13), (20, 13), (0, 25), (10, 25)]),
    # uniform, 4 samples: starts 0..(40-length) split in 3 equal steps, truncated: 39/3=13, 27/3=9, 15/3=5
    ("uniform", [1, 13, 25], {"frame_sample": 4},
     [(0, 1), (13, 1), (26, 1), (39, 1), (0, 13), (9, 13), (18, 13), (27, 13), (0, 25), (5, 25), (10, 25), (15, 25)]),
    ("uniform", [13], {"frame_sample": 1}, [(0, 13)]),  # one sample = head
    # uniform, 3 samples of 13 over 40: 27/2 = 13.5 -> 13
    ("uniform", [13], {"frame_sample": 3}, [(0, 13), (13, 13), (27, 13)]),
    ("head", [45], {}, []),  # longer than the clip: nothing
    ("full", [1], {"max_frames": 129}, [(0, 37)]),  # 40 rounded down to 4n+1
    ("full", [1], {"max_frames": 31}, [(0, 29)]),  # 31 rounded down to 4n+1
]


@pytest.mark.parametrize("mode,targets,options,expected", FORTY_FRAMES)
def test_windows_of_a_40_frame_clip(mode, targets, options, expected):
    assert window_starts(40, mode, targets, **options) == expected


def test_full_trims_three_clips_as_in_the_guide():
    # guide: clips of 20, 25, 35 frames with max_frames 31 -> 17, 25 and 29 frames (each 4n+1, at most 31)
    assert [window_starts(n, "full", [1], max_frames=31) for n in (20, 25, 35)] == [[(0, 17)], [(0, 25)], [(0, 29)]]


def test_chunk_with_one_takes_every_frame():
    assert window_starts(5, "chunk", [1]) == [(i, 1) for i in range(5)]


def test_source_fps_drops_frames_like_musubi():
    # 32 fps -> 16 fps: every other frame
    assert resample_indices(10, 32.0) == [0, 2, 4, 6, 8]
    # 64 -> 16: every 4th
    assert resample_indices(9, 64.0) == [0, 4, 8]
    # 30 -> 16: positions 0, .53, 1.07, 1.6, 2.13, ... keep the frame where the integer part changes
    assert resample_indices(15, 30.0) == [0, 2, 4, 6, 8, 10, 12, 14]
    # a slower source is never upsampled
    assert resample_indices(4, 8.0) == [0, 1, 2, 3]
    assert resample_indices(4, None) == [0, 1, 2, 3]


def test_windows_map_back_to_source_frames():
    windows = extract_windows(12, frame_extraction="slide", target_frames=[5], frame_stride=1, source_fps=32.0)
    # 12 frames at 32 fps keep 0,2,...,10 (6 frames); 5-frame windows start at 0 and 1 of those
    assert [(w.start, w.length, w.source_indices) for w in windows] == [(0, 5, (0, 2, 4, 6, 8)),
                                                                         (1, 5, (2, 4, 6, 8, 10))]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        window_starts(10, "middle", [1])

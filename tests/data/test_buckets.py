"""Bucketing against hand calculation (target 64x64 = 4096 px, step 16)."""
from __future__ import annotations

from types import SimpleNamespace

from backend.data.buckets import assign_buckets, bucket_resolutions, cover_size, select_bucket


def test_bucket_list_by_hand():
    # sqrt(4096) = 64, smallest side 64//2 = 32; widths 32, 48, 64 -> heights 4096//32=128, 4096//48=85->80, 64
    assert bucket_resolutions((64, 64)) == [(32, 128), (48, 80), (64, 64), (80, 48), (128, 32)]


def test_bucket_list_for_a_real_resolution():
    buckets = bucket_resolutions((960, 544))
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in buckets)
    assert all(w * h <= 960 * 544 for w, h in buckets)
    # widths 352 (=(737//2)//16*16) .. 736 step 16; 522240 // 544 = 960 -> the target itself is a bucket
    assert (960, 544) in buckets and (544, 960) in buckets and buckets[0] == (352, 1472)
    assert buckets == sorted(buckets)


def test_nearest_aspect_ratio():
    # aspect ratios 0.25, 0.6, 1, 1.667, 4
    assert select_bucket((96, 64), (64, 64)) == (80, 48)  # 1.5 is nearest 1.667
    assert select_bucket((64, 96), (64, 64)) == (48, 80)  # 0.667 is nearest 0.6
    assert select_bucket((1000, 1000), (64, 64)) == (64, 64)
    assert select_bucket((400, 100), (64, 64)) == (128, 32)
    assert select_bucket((96, 64), (64, 64), enable_bucket=False) == (64, 64)


def test_no_upscale_keeps_small_items_small():
    assert select_bucket((40, 30), (64, 64), no_upscale=True) == (32, 16)  # 1200 px <= 4096: own size floored to 16
    assert select_bucket((200, 100), (64, 64), no_upscale=True) == (80, 48)  # larger: nearest bucket


def test_cover_size_rounds_to_nearest():
    assert cover_size((96, 64), (80, 48)) == (80, 53)  # scale max(80/96, 48/64) = .833: 53.3 -> 53
    assert cover_size((30, 40), (64, 64)) == (64, 85)  # scale 64/30: 85.33 -> 85


def test_preview_groups_and_drops_with_reasons():
    items = [("a", (64, 64)), ("b", (96, 64)), ("c", (8, 40)), ("d", None),
             SimpleNamespace(key="e", width=64, height=96)]
    preview = assign_buckets(items, (64, 64), enable_bucket=True, no_upscale=True)
    assert preview.counts() == {(48, 80): 1, (64, 64): 1, (80, 48): 1}
    assert [key for key, _ in preview.dropped] == ["c", "d"]
    assert "smaller than 16 px" in preview.dropped[0][1] and "unreadable" in preview.dropped[1][1]
    (b,) = preview.buckets[(80, 48)]
    assert b.key == "b" and abs(b.cropped_fraction - (1 - 80 * 48 / (80 * 53))) < 1e-9 and b.scale < 1
    data = preview.to_dict()
    assert list(data["buckets"]) == ["48x80", "64x64", "80x48"] and data["dropped"][1]["key"] == "d"

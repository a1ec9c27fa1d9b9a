"""The numba RLE painter against pycocotools decode + paint, and every malformed-RLE case."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sgt_data.errors import BadRLE
from sgt_data.proxies.rle import MAX_LABELS, paint_annotations, parse_counts
from sgt_data.proxies.seg import SegTarget

# pycocotools 2.0.x trips numpy 2's __array__(copy=) deprecation inside decode(); not our code.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sa1b"


def encode_counts(counts: list[int]) -> str:
    """Test-side writer of the compressed counts format (checked against pycocotools below)."""
    chars = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift keeps the sign
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr(c + 48 + (0x20 if more else 0)))
    return "".join(chars)


def random_masks(rng: np.random.Generator, h: int, w: int, n: int) -> list[np.ndarray]:
    """Overlapping ellipses/polygons (some cut by the border) plus one empty and one full mask."""
    masks = [np.zeros((h, w), np.uint8), np.ones((h, w), np.uint8)]
    for k in range(n):
        m = np.zeros((h, w), np.uint8)
        cx, cy = rng.integers(-w // 4, w + w // 4), rng.integers(-h // 4, h + h // 4)
        r = int(rng.integers(1, max(2, max(h, w) // 2)))
        if k % 2:
            pts = np.stack([cx + rng.integers(-r, r + 1, 6), cy + rng.integers(-r, r + 1, 6)], 1)
            cv2.fillPoly(m, [pts.astype(np.int32)], 1)
        else:
            cv2.ellipse(
                m,
                (int(cx), int(cy)),
                (r, int(rng.integers(1, r + 1))),
                float(rng.uniform(0, 180)),
                0,
                360,
                1,
                -1,
            )
        masks.append(m)
    order = rng.permutation(len(masks))
    return [masks[i] for i in order]


def to_annotations(masks: list[np.ndarray]) -> list[dict]:
    out = []
    for k, m in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(m))
        out.append(
            {
                "id": 100 + k,
                "area": int(mask_utils.area(rle)),
                "size": rle["size"],
                "counts": rle["counts"].decode(),
            }
        )
    return out


def reference_paint(annotations: list[dict], h: int, w: int) -> np.ndarray:
    """pycocotools decode of each mask, painted area-descending, ties in annotation order."""
    labels = np.zeros((h, w), np.uint16)
    order = sorted(range(len(annotations)), key=lambda j: -annotations[j]["area"])
    for rank, j in enumerate(order, start=1):
        labels[mask_utils.decode({"size": [h, w], "counts": annotations[j]["counts"].encode()}) > 0] = rank
    return labels


@pytest.mark.parametrize("h,w", [(1, 1), (1, 9), (7, 5), (37, 53), (64, 64), (101, 33), (150, 225)])
def test_paint_matches_pycocotools(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    annotations = to_annotations(random_masks(rng, h, w, 25))
    labels = paint_annotations(annotations, h, w)
    assert labels.shape == (h, w) and labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, reference_paint(annotations, h, w))


def test_parse_counts_matches_pycocotools_and_test_encoder() -> None:
    rng = np.random.default_rng(1)
    for m in random_masks(rng, 40, 60, 10):
        counts = mask_utils.encode(np.asfortranarray(m))["counts"]
        runs = parse_counts(counts.decode())
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
        np.testing.assert_array_equal(flat, m.ravel(order="F"))
        assert encode_counts(runs.tolist()) == counts.decode()
    assert parse_counts(b"").size == 0
    np.testing.assert_array_equal(parse_counts(encode_counts([0, 5, 3, 1 << 30])), [0, 5, 3, 1 << 30])


def test_ties_keep_annotation_order_and_labels_are_ranks() -> None:
    h, w = 4, 4
    left = np.zeros((h, w), np.uint8)
    left[:, :2] = 1
    mid = np.zeros((h, w), np.uint8)
    mid[:, 1:3] = 1  # same area as `left`, overlaps its column 1
    small = np.zeros((h, w), np.uint8)
    small[0, 1] = 1
    labels = paint_annotations(to_annotations([small, left, mid]), h, w)
    # left painted first (label 1), then mid (2) over column 1, then the smallest (3) on top
    np.testing.assert_array_equal(labels[:, 0], 1)
    np.testing.assert_array_equal(labels[1:, 1], 2)
    assert labels[0, 1] == 3
    np.testing.assert_array_equal(labels[:, 3], 0)


def test_empty_list_is_all_zero_and_many_labels_fit_uint16() -> None:
    assert not paint_annotations([], 5, 7).any()
    assert paint_annotations([], 5, 7).shape == (5, 7)
    h, w = 20, 30  # 600 one-pixel masks: labels past 255 must survive
    n = h * w
    anns = [{"id": p, "size": [h, w], "counts": encode_counts([p, 1, n - p - 1])} for p in range(n)]
    labels = paint_annotations(anns, h, w)
    assert labels.max() == n
    np.testing.assert_array_equal(np.sort(labels.ravel(order="F")), np.arange(1, n + 1))


def test_sa1b_nested_segmentation_from_bundled_sample() -> None:
    record = json.loads((SAMPLE / "sa_2.json").read_text())
    h, w = record["image"]["height"], record["image"]["width"]
    anns = record["annotations"]
    flat = [{"id": a["id"], "area": a["area"], **a["segmentation"]} for a in anns]
    np.testing.assert_array_equal(paint_annotations(anns, h, w), reference_paint(flat, h, w))


GOOD = encode_counts([3, 4, 5])  # 12 pixels: 3x4


@pytest.mark.parametrize(
    "ann,needle",
    [
        ({"id": 7, "size": [4, 3], "counts": GOOD}, "annotation id 7: RLE size [4, 3] != image size [3, 4]"),
        ({"id": 8, "size": [3, 4], "counts": GOOD[:-1] + "!"}, "annotation id 8: counts has byte b'!'"),
        ({"id": 9, "size": [3, 4], "counts": GOOD + "~"}, "annotation id 9: counts has byte b'~'"),
        (
            {"id": 10, "size": [3, 4], "counts": GOOD[:-1] + "P"},
            "annotation id 10: counts ends inside count #2",
        ),
        ({"id": 11, "size": [3, 4], "counts": encode_counts([3, 4, 6])}, "annotation id 11: runs overflow"),
        (
            {"id": 12, "size": [3, 4], "counts": encode_counts([3, 4, 4])},
            "annotation id 12: runs cover 11 pixels",
        ),
        (
            {"id": 13, "size": [3, 4], "counts": encode_counts([3, -1, 10])},
            "annotation id 13: count #1 decodes to a negative",
        ),
        ({"id": 14, "size": [3, 4], "counts": "é"}, "annotation id 14: counts string is not ASCII"),
        ({"id": 15, "size": [3, 4], "counts": [3, 4, 5]}, "annotation id 15: counts is list"),
        ({"id": 16, "size": [3, 4]}, "annotation id 16: no RLE 'size'/'counts'"),
        ({"id": 19, "size": 12, "counts": GOOD}, "annotation id 19: RLE size 12 != image size [3, 4]"),
        ("sa_1.json", "annotation is str, not a dict"),
        ({"id": 17, "size": [3, 4], "counts": "o" * 9}, "annotation id 17: count #0 uses more than 7 chars"),
        (
            {"id": 18, "size": [3, 4], "counts": ""},
            "annotation id 18: runs cover 0 pixels but the image has h*w = 12",
        ),
    ],
)
def test_bad_rle_names_the_annotation_and_the_problem(ann: dict, needle: str) -> None:
    good = {"id": 1, "size": [3, 4], "counts": GOOD}
    with pytest.raises(BadRLE) as info:
        paint_annotations([good, ann], 3, 4)
    assert needle in str(info.value)
    batch = {
        "key": ["k"],
        "status": ["ok"],
        "error": [None],
        "width": [4],
        "height": [3],
        "annotations": [[good, ann]],
    }
    out = SegTarget()(batch)
    assert out["status"] == ["bad_rle"] and needle in out["error"][0] and out["seg"] == [None]


def test_too_many_masks_is_bad_rle() -> None:
    ann = {"id": 0, "size": [1, 1], "counts": encode_counts([0, 1])}
    with pytest.raises(
        BadRLE, match=f"{MAX_LABELS + 1} masks but a uint16 label map holds at most {MAX_LABELS}"
    ):
        paint_annotations([ann] * (MAX_LABELS + 1), 1, 1)
    assert paint_annotations([ann] * MAX_LABELS, 1, 1)[0, 0] == MAX_LABELS

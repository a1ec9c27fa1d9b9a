"""Proxy steps on real bytes: determinism, palettes, SAM-SGT masks, edges, decode guards, the row contract."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sgt_data.errors import BadImage
from sgt_data.proxies.edge import EdgeTarget, auto_thresholds, mask_boundaries
from sgt_data.proxies.image import DecodeImage, decode_image, header_size, map_ok_rows
from sgt_data.proxies.prompts import TEMPLATES, Prompts
from sgt_data.proxies.seg import MIN_BRIGHTNESS, SegTarget, make_palette

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sa1b"
IDS = range(1, 9)


def load_sample(ids=IDS) -> list[dict]:
    rows = []
    for i in ids:
        record = json.loads((SAMPLE / f"sa_{i}.json").read_text())
        anns = [{"id": a["id"], "area": a["area"], **a["segmentation"]} for a in record["annotations"]]
        rows.append({"key": f"sa_{i}", "image": (SAMPLE / f"sa_{i}.jpg").read_bytes(), "annotations": anns})
    return rows


def make_batch(rows: list[dict]) -> dict[str, list]:
    cols = ("key", "image", "annotations", "sam_mask", "width", "height")
    batch = {c: [r.get(c) for r in rows] for c in cols}
    batch["status"] = ["ok"] * len(rows)
    batch["error"] = [None] * len(rows)
    return batch


def run_steps(batch: dict, steps) -> dict:
    for step in steps:
        step.setup()
        batch = step(batch)
    return batch


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def pipeline(seed: int = 0):
    return [DecodeImage(), SegTarget(seed), EdgeTarget("image", "auto"), Prompts(seed=seed)]


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def test_bundled_sample_runs_clean_and_targets_are_rgb_and_binary() -> None:
    rows = load_sample()
    out = run_steps(make_batch(rows), pipeline())
    assert out["status"] == ["ok"] * 8 and out["error"] == [None] * 8
    for i, row in enumerate(rows):
        record = json.loads((SAMPLE / f"{row['key']}.json").read_text())
        assert (out["width"][i], out["height"][i]) == (record["image"]["width"], record["image"]["height"])
        seg, edge = png_array(out["seg"][i]), png_array(out["edge"][i])
        assert seg.shape == (out["height"][i], out["width"][i], 3)
        assert edge.shape == seg.shape[:2] and set(np.unique(edge)) <= {0, 255} and edge.any()
        for level in TEMPLATES:
            assert out[f"prompt_{level}"][i] in TEMPLATES[level]


def test_same_key_same_outputs_regardless_of_order_and_split() -> None:
    rows = load_sample([1, 2, 3])
    whole = run_steps(make_batch(rows), pipeline(seed=7))
    parts = [
        run_steps(make_batch([rows[2], rows[0]]), pipeline(seed=7)),
        run_steps(make_batch([rows[1]]), pipeline(7)),
    ]
    by_key = {k: i for i, k in enumerate(whole["key"])}
    for part in parts:
        for j, key in enumerate(part["key"]):
            for col in ("seg", "edge", "prompt_seg", "prompt_edge", "prompt_depth"):
                assert part[col][j] == whole[col][by_key[key]], (key, col)
    other_seed = run_steps(make_batch(rows[:1]), pipeline(seed=8))
    assert other_seed["seg"][0] != whole["seg"][0]


def test_seg_pixels_are_palette_colours_of_the_label_map_in_rgb() -> None:
    out = run_steps(make_batch(load_sample([2])), [DecodeImage(), SegTarget(seed=3)])
    labels = out["_labels"][0]
    palette = make_palette(len(out["annotations"][0]), "sa_2", 3)
    np.testing.assert_array_equal(png_array(out["seg"][0]), palette[labels])


def test_palette_reserves_black_and_is_distinct() -> None:
    pal = make_palette(5000, "sa_42", 0)
    assert pal.shape == (5001, 3) and pal.dtype == np.uint8
    assert (pal[0] == 0).all()
    assert (pal[1:].max(axis=1) >= MIN_BRIGHTNESS).all()
    assert len(np.unique(pal, axis=0)) == 5001
    np.testing.assert_array_equal(pal, make_palette(5000, "sa_42", 0))
    assert not np.array_equal(pal, make_palette(5000, "sa_43", 0))


def test_prompts_depend_on_key_only_and_use_many_templates() -> None:
    keys = [f"sa_{i}" for i in range(400)]
    batch = Prompts(["seg", "edge"], seed=1)({"key": keys, "status": ["ok"] * 400, "error": [None] * 400})
    again = Prompts(["seg", "edge"], seed=1)(
        {"key": keys[::-1], "status": ["ok"] * 400, "error": [None] * 400}
    )
    assert batch["prompt_seg"] == again["prompt_seg"][::-1]
    assert len(set(batch["prompt_seg"])) > len(TEMPLATES["seg"]) * 0.8
    assert "prompt_depth" not in batch
    for level, templates in TEMPLATES.items():
        assert 20 <= len(templates) <= 40 and len(set(templates)) == len(templates), level
    with pytest.raises(ValueError, match="unknown prompt levels"):
        Prompts(["segm"])


def test_empty_annotations_give_black_seg_and_ok() -> None:
    batch = make_batch([{"key": "k", "image": jpeg(np.full((30, 40, 3), 128, np.uint8)), "annotations": []}])
    out = run_steps(batch, [DecodeImage(), SegTarget(), EdgeTarget("masks")])
    assert out["status"] == ["ok"]
    assert not png_array(out["seg"][0]).any() and png_array(out["seg"][0]).shape == (30, 40, 3)
    assert not png_array(out["edge"][0]).any()


def test_no_masks_at_all_is_bad_annotations() -> None:
    batch = make_batch([{"key": "k", "image": jpeg(np.zeros((8, 8, 3), np.uint8))}])
    out = run_steps(batch, [DecodeImage(), SegTarget(), EdgeTarget("masks")])
    assert out["status"] == ["bad_annotations"] and "no masks for this sample" in out["error"][0]
    assert out["seg"] == [None] and out["edge"] == [None]


def sam_png(h: int, w: int) -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(60, 256, (h, w, 3), dtype=np.uint8)
    return rgb, cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()


def test_sam_mask_resized_nearest_and_passed_through_when_sized() -> None:
    small_rgb, small_png = sam_png(4, 6)
    big_rgb, big_png = sam_png(8, 12)
    image = jpeg(np.zeros((8, 12, 3), np.uint8))
    batch = make_batch(
        [
            {"key": "a", "image": image, "sam_mask": small_png},
            {"key": "b", "image": image, "sam_mask": big_png},
        ]
    )
    out = run_steps(batch, [DecodeImage(), SegTarget(), EdgeTarget("masks")])
    assert out["status"] == ["ok", "ok"]
    np.testing.assert_array_equal(png_array(out["seg"][0]), small_rgb.repeat(2, 0).repeat(2, 1))
    assert out["seg"][1] == big_png  # already an RGB PNG of the right size: no re-encode
    # 2x2 blocks of random colours: every pixel touches another block except the four image corners
    assert len(np.unique(small_rgb.reshape(-1, 3), axis=0)) == 24
    expected = np.full((8, 12), 255, np.uint8)
    expected[[0, 0, -1, -1], [0, -1, 0, -1]] = 0
    np.testing.assert_array_equal(png_array(out["edge"][0]), expected)


def test_corrupt_sam_mask_is_bad_target() -> None:
    image = jpeg(np.zeros((8, 8, 3), np.uint8))
    masks = [
        (b"\x89PNG\r\n\x1a\nxx", "sam_mask: image header unreadable"),
        (sam_png(8, 8)[1][:-30], "sam_mask: PNG is truncated"),
        (bomb_png(10000, 10000), "over the 64 MP limit"),
        (b"", "sam_mask is empty"),
    ]
    batch = make_batch([{"key": str(k), "image": image, "sam_mask": m} for k, (m, _) in enumerate(masks)])
    out = run_steps(batch, [DecodeImage(), SegTarget()])
    assert out["status"] == ["bad_target"] * len(masks)
    for error, (_, needle) in zip(out["error"], masks):
        assert needle in error, error


def test_canny_fixed_and_auto_match_opencv_on_grey() -> None:
    bgr = cv2.imdecode(np.frombuffer((SAMPLE / "sa_3.jpg").read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    batch = {"key": ["k"], "status": ["ok"], "error": [None], "_bgr": [bgr]}
    fixed = EdgeTarget("image", 50, 150)(dict(batch))
    np.testing.assert_array_equal(png_array(fixed["edge"][0]), cv2.Canny(gray, 50, 150))
    odd = gray[:, : gray.shape[1] - (gray.size % 2 == 0)]  # odd pixel count: lower median == np.median
    med = float(np.median(odd))
    assert auto_thresholds(odd) == (int(0.67 * med), int(min(255, 1.33 * med)))
    lo, hi = auto_thresholds(gray)
    auto = EdgeTarget("image", "auto")(dict(batch))
    np.testing.assert_array_equal(png_array(auto["edge"][0]), cv2.Canny(gray, lo, hi))
    wide = EdgeTarget("image", 50, 150, width=3)(dict(batch))
    assert np.count_nonzero(png_array(wide["edge"][0])) > 2 * np.count_nonzero(cv2.Canny(gray, 50, 150))


def test_mask_boundaries_mark_both_sides_of_a_label_change() -> None:
    labels = np.zeros((6, 7), np.uint16, order="F")
    labels[:, 4:] = 2
    labels[0, 0] = 1
    edges = mask_boundaries(labels)
    expected = np.zeros((6, 7), np.uint8)
    expected[:, 3:5] = 255
    expected[0, 0] = expected[0, 1] = expected[1, 0] = 255
    np.testing.assert_array_equal(edges, expected)
    np.testing.assert_array_equal(mask_boundaries(np.ascontiguousarray(labels)), expected)
    colour = np.stack([labels.astype(np.uint8)] * 3, -1)
    np.testing.assert_array_equal(mask_boundaries(colour), expected)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims width x height (CRC fixed up)."""
    data = bytearray(cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))[1].tobytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = ihdr[4:12]
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_decode_guards() -> None:
    good = jpeg(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    assert decode_image(good).shape == (64, 80, 3)
    cases = {
        "bomb": (bomb_png(30000, 30000), "900.0 MP, over the 64.0 MP limit"),
        "limit": (good, "over the 0.0 MP limit"),
        "truncated": (good[: len(good) * 2 // 3], "JPEG is truncated"),
        "no_eoi": (good[:-2], "JPEG is truncated"),
        "png_truncated": (
            cv2.imencode(".png", np.zeros((9, 9), np.uint8))[1].tobytes()[:-20],
            "PNG is truncated",
        ),
        "garbage": (b"not an image at all", "image header unreadable"),
        "corrupt_body": (good[:200] + bytes(len(good) - 202) + b"\xff\xd9", "cv2 cannot decode"),
        "header_only": (good[:200] + bytes(len(good) - 200), "JPEG is truncated"),
        "empty": (b"", "empty or missing"),
    }
    batch = {"key": list(cases), "status": ["ok"] * len(cases), "error": [None] * len(cases)}
    batch["image"] = [c[0] for c in cases.values()]
    steps = [DecodeImage(max_pixels=64_000_000)]
    out = run_steps(dict(batch), steps)
    for i, (name, (_, needle)) in enumerate(cases.items()):
        if name == "limit":
            continue
        assert out["status"][i] == "bad_image", name
        assert needle in out["error"][i], (name, out["error"][i])
    with pytest.raises(BadImage, match="over the 0.0 MP limit"):
        decode_image(good, max_pixels=100)
    with pytest.raises(ValueError):
        DecodeImage(max_pixels=0)


def test_embedded_thumbnail_neither_fools_the_size_nor_the_truncation_check() -> None:
    rng = np.random.default_rng(2)
    main = jpeg(rng.integers(0, 256, (48, 72, 3), dtype=np.uint8))
    thumb = jpeg(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))  # has its own SOF, SOS and EOI
    payload = b"Exif\x00\x00" + thumb
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    with_thumb = main[:2] + app1 + main[2:]
    assert header_size(with_thumb) == (72, 48)
    assert decode_image(with_thumb).shape == (48, 72, 3)
    with pytest.raises(BadImage, match="JPEG is truncated"):
        decode_image(with_thumb[: len(with_thumb) - 300])
    progressive = cv2.imencode(
        ".jpg", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    )
    data = progressive[1].tobytes()
    assert decode_image(data).shape == (40, 50, 3)
    with pytest.raises(BadImage, match="JPEG is truncated"):
        decode_image(data[: len(data) - 100])


def test_exif_orientation_is_ignored_so_masks_keep_the_stored_grid() -> None:
    img = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    plain = jpeg(img)
    tiff = b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + bytes(4)
    payload = b"Exif\x00\x00" + tiff  # one IFD entry: Orientation = 6 (rotate 90 degrees)
    rotated = plain[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + plain[2:]
    assert cv2.imdecode(np.frombuffer(rotated, np.uint8), cv2.IMREAD_COLOR).shape == (60, 40, 3)
    np.testing.assert_array_equal(decode_image(rotated), decode_image(plain))


def test_wrapper_keeps_rows_and_isolates_failures() -> None:
    rows = load_sample([1, 2])
    bad_rle = dict(rows[1], key="bad", annotations=[dict(rows[1]["annotations"][0], size=[1, 1])])
    batch = make_batch([rows[0], {"key": "broken", "image": b"xx"}, bad_rle, rows[1]])
    batch["status"][3] = "missing_partner"  # an earlier failure: later steps must leave it alone
    batch["error"][3] = "upstream"
    out = run_steps(batch, [DecodeImage(), SegTarget(), EdgeTarget("masks", width=2), Prompts()])
    assert len(out["key"]) == 4 and all(len(col) == 4 for col in out.values())
    assert out["status"] == ["ok", "bad_image", "bad_rle", "missing_partner"]
    assert out["error"][3] == "upstream" and out["seg"][3] is None and out["prompt_seg"][3] is None
    assert out["seg"][2] is None and out["_bgr"][2] is not None  # decoded, then failed at seg: no partial seg

    def boom(batch, i):
        raise KeyError("not a sample error")

    with pytest.raises(KeyError):
        map_ok_rows({"key": ["a"], "status": ["ok"], "error": [None]}, boom, ["x"])
    with pytest.raises(ValueError, match="differ in length"):
        map_ok_rows({"key": ["a"], "status": ["ok", "ok"], "error": [None]}, boom, ["x"])

"""Make the bundled SA-1B-format sample in examples/sa1b/ (deterministic; see examples/README.md).

Needs scikit-image only to run (its bundled CC0 / public-domain data images and its classical segmenters);
the project itself does not depend on it:

    pip install scikit-image
    python examples/make_sample.py [--out examples/sa1b] [--long-side 768]

For each image: resize so the long side is `--long-side`, save `sa_<id>.jpg` (q90), segment with SLIC at a
coarse and a fine scale (so masks overlap as SA-1B's whole/part masks do), drop tiny segments, smooth each
mask a little (short RLE strings keep the repo small) and write `sa_<id>.json` with the SA-1B fields.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from skimage import data as skdata
from skimage.segmentation import slic

# (name in skimage.data, licence as stated in scikit-image's docstring)
SOURCES = (
    ("astronaut", "public domain (NASA)"),
    ("coffee", "CC0 (Rachel Michetti)"),
    ("chelsea", "CC0 (Stefan van der Walt)"),
    ("rocket", "public domain (SpaceX)"),
    ("hubble_deep_field", "public domain (NASA)"),
    ("immunohistochemistry", "no known copyright restrictions"),
    ("retina", "CC0 1.0 (Mikael Häggström, via Wikimedia Commons)"),
    ("camera", "CC0 (Lav Varshney)"),
)
SCALES = ((24, 10.0), (90, 10.0))  # (SLIC n_segments, compactness): coarse wholes, then finer parts
MIN_AREA_FRACTION = 0.002


def load_rgb(name: str, long_side: int) -> np.ndarray:
    """A scikit-image sample as HxWx3 uint8 RGB with its long side resized to `long_side`."""
    img = getattr(skdata, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    h, w = img.shape[:2]
    scale = long_side / max(h, w)
    size = (round(w * scale), round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(img, size, interpolation=interp)


def segment_masks(rgb: np.ndarray) -> list[np.ndarray]:
    """Binary masks (uint8 HxW) from SLIC at two scales, smoothed, tiny ones dropped."""
    h, w = rgb.shape[:2]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    masks = []
    for n_segments, compactness in SCALES:
        labels = slic(rgb, n_segments=n_segments, compactness=compactness, start_label=1, channel_axis=-1)
        for value in range(1, int(labels.max()) + 1):
            mask = (labels == value).astype(np.uint8)
            mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
            if mask.sum() >= MIN_AREA_FRACTION * h * w:
                masks.append(mask)
    return masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def annotation(mask: np.ndarray, ann_id: int) -> dict:
    """One SA-1B annotation. predicted_iou / stability_score are stand-ins computed from the mask (see README)."""
    h, w = mask.shape
    rle = mask_utils.encode(np.asfortranarray(mask))
    kernel = np.ones((3, 3), np.uint8)
    stability = iou(cv2.erode(mask, kernel), cv2.dilate(mask, kernel))
    smooth = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return {
        "id": ann_id,
        "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "predicted_iou": round(iou(mask, smooth), 4),
        "stability_score": round(stability, 4),
        "crop_box": [0.0, 0.0, float(w), float(h)],
        "point_coords": [[float(x), float(y)]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "sa1b")
    parser.add_argument("--long-side", type=int, default=768)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for image_id, (name, licence) in enumerate(SOURCES, start=1):
        rgb = load_rgb(name, args.long_side)
        h, w = rgb.shape[:2]
        file_name = f"sa_{image_id}.jpg"
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        (args.out / file_name).write_bytes(jpg.tobytes())
        masks = segment_masks(rgb)
        record = {
            "image": {"image_id": image_id, "width": w, "height": h, "file_name": file_name},
            "annotations": [annotation(m, image_id * 1000 + k) for k, m in enumerate(masks)],
        }
        (args.out / f"sa_{image_id}.json").write_text(json.dumps(record, separators=(",", ":")))
        print(f"{file_name}: {name} ({licence}) {w}x{h}, {len(masks)} masks")


if __name__ == "__main__":
    main()

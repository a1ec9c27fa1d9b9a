"""Synthetic SA-1B-format inputs for benchmarks: smooth images + overlapping random masks as compressed RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_sa1b_folder(folder: Path, n: int, height: int, width: int, masks: int, seed: int = 0) -> Path:
    """Write `n` samples `sa_<i>.jpg` + `sa_<i>.json` (SA-1B fields) into `folder`; returns the folder."""
    import cv2
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = (rng.random((height // 16 + 1, width // 16 + 1, 3)) * 255).astype(np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"sa_{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        annotations = []
        for k in range(masks):
            m = np.zeros((height, width), np.uint8)
            r = int(rng.integers(max(4, min(height, width) // 60), max(8, min(height, width) // 4)))
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.ellipse(
                m, centre, (r, int(r * rng.uniform(0.4, 1.0))), float(rng.uniform(0, 180)), 0, 360, 1, -1
            )
            rle = mask_utils.encode(np.asfortranarray(m))
            annotations.append(
                {
                    "id": k,
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                    "area": int(m.sum()),
                    "bbox": [0, 0, 0, 0],
                    "predicted_iou": 0.9,
                    "stability_score": 0.95,
                    "crop_box": [0, 0, width, height],
                    "point_coords": [[centre[0], centre[1]]],
                }
            )
        doc = {"image": {"image_id": i, "width": width, "height": height, "file_name": f"sa_{i}.jpg"},
               "annotations": annotations}  # fmt: skip
        (folder / f"sa_{i}.json").write_text(json.dumps(doc))
    return folder

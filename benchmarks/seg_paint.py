"""Benchmark: paint SA-1B-like RLE masks into a label map, ours vs pycocotools decode-each + boolean paint.

Both sides produce the same uint16 label map (checked): masks painted area-descending so smaller ones stay on
top. Ours parses the compressed counts strings and writes runs straight into one buffer (numba); the baseline is
what most code does, `mask.decode` per annotation and `labels[mask > 0] = k`.

    python benchmarks/seg_paint.py                 # 100 masks at 1500x2250, best of 5 (baseline) / 30 (ours)
    python benchmarks/seg_paint.py --quick         # smaller and fewer repeats, for a smoke run

Prints both times and `RESULT seg_paint <baseline / ours>`.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from sgt_data.proxies.rle import paint_annotations


def make_annotations(height: int, width: int, n_masks: int, seed: int = 0) -> list[dict]:
    """SA-1B-like annotations: overlapping random 12-gons and ellipses, radius 30-400 px, some on borders."""
    rng = np.random.default_rng(seed)
    annotations = []
    for ann_id in range(n_masks):
        canvas = np.zeros((height, width), np.uint8)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(30, 400)
        if ann_id % 2:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
            radii = radius * rng.uniform(0.5, 1.0, 12)
            points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
        else:
            axes = (int(radius), int(radius * rng.uniform(0.3, 1.0)))
            cv2.ellipse(canvas, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        rle = mask_utils.encode(np.asfortranarray(canvas))
        annotations.append(
            {
                "id": ann_id,
                "area": int(mask_utils.area(rle)),
                "size": rle["size"],
                "counts": rle["counts"].decode(),
            }
        )
    return annotations


def baseline_paint(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """pycocotools decode per mask + boolean-index paint, area-descending (stable on ties)."""
    labels = np.zeros((height, width), np.uint16)
    order = sorted(range(len(annotations)), key=lambda j: -annotations[j]["area"])
    for rank, j in enumerate(order, start=1):
        ann = annotations[j]
        mask = mask_utils.decode({"size": ann["size"], "counts": ann["counts"].encode()})
        labels[mask > 0] = rank
    return labels


def best_of(fn, repeat: int) -> float:
    """Best wall time of `repeat` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--width", type=int, default=2250)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs of the baseline (ours runs 6x as many)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="750x1125, 2 baseline repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.height, args.width, args.repeat = 750, 1125, 2

    h, w = args.height, args.width
    annotations = make_annotations(h, w, args.masks, args.seed)
    ours = paint_annotations(annotations, h, w)
    if not np.array_equal(ours, baseline_paint(annotations, h, w)):
        raise SystemExit("label maps differ: ours is wrong, the benchmark is void")
    coverage = float((ours > 0).mean())
    t_ours = best_of(lambda: paint_annotations(annotations, h, w), args.repeat * 6)
    t_base = best_of(lambda: baseline_paint(annotations, h, w), args.repeat)
    print(f"{args.masks} masks on {h}x{w} (coverage {coverage:.0%}), identical label maps")
    print(f"pycocotools decode + paint: {t_base * 1e3:8.1f} ms (best of {args.repeat})")
    print(f"ours (numba run painter):   {t_ours * 1e3:8.2f} ms (best of {args.repeat * 6})")
    ratio = t_base / t_ours
    print(f"RESULT seg_paint {ratio:.1f}")
    return ratio


if __name__ == "__main__":
    main()

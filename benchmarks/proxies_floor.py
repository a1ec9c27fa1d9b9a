"""Benchmark: per-image seg + edge cost of our steps vs the codec floor for the same image.

Ours: DecodeImage -> SegTarget (paint ~100 RLE masks, palette, render, PNG encode) -> EdgeTarget (grey, Canny,
PNG encode), on a one-row batch, exactly as the runner calls them. Floor: what any implementation must pay for
the same job, i.e. one cv2 JPEG decode of the same bytes plus one cv2 PNG encode of each of our two outputs.
A ratio near 1 means the targets cost next to nothing beyond the codecs.

    python benchmarks/proxies_floor.py            # 2250x1500 JPEG (~1.2 MB), 100 masks, best of 7
    python benchmarks/proxies_floor.py --quick    # best of 3
    python benchmarks/proxies_floor.py --edge masks   # mask-boundary edges instead of Canny

The image is a bundled example picture upscaled to SA-1B's released size with mild sensor-like noise (so the
JPEG has realistic detail and size); masks are SA-1B-like random overlapping polygons/ellipses.
Prints both times and `RESULT proxies_floor <ours / floor>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seg_paint import best_of, make_annotations  # noqa: E402

from sgt_data.proxies.edge import EdgeTarget  # noqa: E402
from sgt_data.proxies.image import DecodeImage  # noqa: E402
from sgt_data.proxies.seg import SegTarget  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sa1b" / "sa_2.jpg"


def make_jpeg(height: int, width: int, seed: int = 0) -> bytes:
    """A photo-like JPEG at height x width: the example picture upscaled, plus noise, quality 95."""
    small = cv2.imdecode(np.frombuffer(EXAMPLE.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    big += np.random.default_rng(seed).normal(0, 4, big.shape).astype(np.int16)
    ok, jpg = cv2.imencode(".jpg", np.clip(big, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return jpg.tobytes()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--width", type=int, default=2250)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--edge", choices=("image", "masks"), default="image")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="cv2 threads (1 = a one-CPU worker, as the runner schedules us)",
    )
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    if args.quick:
        args.repeat = 3

    h, w = args.height, args.width
    data = make_jpeg(h, w)
    annotations = make_annotations(h, w, args.masks)
    edge_step = EdgeTarget("image", "auto") if args.edge == "image" else EdgeTarget("masks", width=2)
    # As `build proxies` chains them for seg + edge without depth: the luma-only decode (no step needs colour).
    steps = [DecodeImage(grey=True), SegTarget(seed=0), edge_step]
    for step in steps:
        step.setup()

    def ours() -> dict:
        batch = {"key": ["sa_1"], "status": ["ok"], "error": [None], "image": [data], "width": [None],
                 "height": [None], "annotations": [annotations], "sam_mask": [None]}  # fmt: skip
        for step in steps:
            batch = step(batch)
        return batch

    out = ours()
    assert out["status"] == ["ok"], out["error"]
    seg_img = cv2.imdecode(np.frombuffer(out["seg"][0], np.uint8), cv2.IMREAD_COLOR)
    edge_img = cv2.imdecode(np.frombuffer(out["edge"][0], np.uint8), cv2.IMREAD_GRAYSCALE)
    buf = np.frombuffer(data, np.uint8)

    def floor() -> None:
        cv2.imdecode(buf, cv2.IMREAD_COLOR)
        cv2.imencode(".png", seg_img)
        cv2.imencode(".png", edge_img)

    def luma_floor() -> None:
        cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        cv2.imencode(".png", seg_img)
        cv2.imencode(".png", edge_img)

    # Interleave the two so machine noise hits both alike; keep each side's best.
    t_ours, t_floor, t_luma = [], [], []
    for _ in range(args.repeat):
        t_floor.append(best_of(floor, 1))
        t_luma.append(best_of(luma_floor, 1))
        t_ours.append(best_of(ours, 1))
    t_ours_best, t_floor_best, t_luma_best = min(t_ours), min(t_floor), min(t_luma)
    print(f"{w}x{h} JPEG {len(data) / 1e6:.2f} MB, {args.masks} masks, edge source {args.edge}, "
          f"cv2 threads {args.threads}; "
          f"seg PNG {len(out['seg'][0]) / 1e6:.2f} MB, edge PNG {len(out['edge'][0]) / 1e6:.2f} MB")  # fmt: skip
    print(f"codec floor (decode + 2 PNG encodes): {t_floor_best * 1e3:7.1f} ms (best of {args.repeat})")
    print(f"luma floor (grey decode + 2 PNG encodes): {t_luma_best * 1e3:7.1f} ms -> ours / luma floor "
          f"{t_ours_best / t_luma_best:.2f}")  # fmt: skip
    print(f"ours (decode + seg + edge steps):     {t_ours_best * 1e3:7.1f} ms (best of {args.repeat})")
    ratio = t_ours_best / t_floor_best
    print(f"RESULT proxies_floor {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()

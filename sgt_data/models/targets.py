"""Decoding our target PNGs for the ports: one rule for both, so a depth map means the same to every model.

Seg and edge targets are 8-bit PNGs and convert to RGB as usual. Depth targets are single-channel 16-bit PNGs
(relative inverse depth scaled to 0..65535, see `sgt_data/proxies/depth.py`); Pillow opens them as mode `I;16`
and its `.convert("RGB")` clips every value above 255 to white. They are scaled to 8 bits first (top byte),
then replicated into grey RGB, which is what an image generator can draw.
"""

from __future__ import annotations

import numpy as np

_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb8(img):
    """A PIL image -> 8-bit RGB PIL image; 16-bit and 32-bit grey maps are rescaled, not clipped."""
    from PIL import Image

    if img.mode in _HIGH_DEPTH_MODES:
        arr = np.asarray(img)
        if img.mode.startswith("I;16"):
            grey = (arr.astype(np.uint16) >> 8).astype(np.uint8)
        else:  # 32-bit int or float maps: stretch their own range (not produced by our builds)
            arr = arr.astype(np.float64)
            lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
            grey = (
                np.zeros(arr.shape, np.uint8)
                if hi <= lo
                else ((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
            )
        return Image.fromarray(grey, "L").convert("RGB")
    return img.convert("RGB")

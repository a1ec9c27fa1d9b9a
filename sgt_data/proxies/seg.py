"""The seg target: a colour-per-instance RGB PNG, from painted SA-1B RLE or a ready-made SAM-SGT colour mask.

Colours come from a palette seeded by the sample key (plus a global seed), so the same sample gets the same
colours whatever the batch order or worker count. Black (0, 0, 0) means "no mask"; labels never get black or a
near-black colour, and no two labels share a colour, so every instance stays separable in the target.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numba import njit

from sgt_data.errors import BadAnnotations, BadImage, BadTarget
from sgt_data.proxies.image import DEFAULT_MAX_PIXELS, Batch, check_complete, header_size, map_ok_rows
from sgt_data.proxies.prompts import key_seed
from sgt_data.proxies.rle import paint_annotations, warm_up

MIN_BRIGHTNESS = 48  # a label colour's brightest channel is at least this, so it never reads as unlabelled


def make_palette(n_labels: int, key: str, seed: int = 0) -> np.ndarray:
    """(n_labels + 1, 3) uint8 RGB; row 0 is black (unlabelled), rows 1.. are distinct, not dark, seeded by key."""
    rng = np.random.default_rng(key_seed(key, seed, "palette"))
    palette = np.zeros((n_labels + 1, 3), np.uint8)
    todo = np.arange(1, n_labels + 1)
    while todo.size:  # redraw dark or repeated colours; converges in a round or two
        palette[todo] = rng.integers(0, 256, (todo.size, 3), dtype=np.uint8)
        packed = palette.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
        _, first = np.unique(packed, return_index=True)
        repeated = np.ones(n_labels + 1, bool)
        repeated[first] = False
        dark = palette.max(axis=1) < MIN_BRIGHTNESS
        dark[0] = repeated[0] = False
        todo = np.flatnonzero(dark | repeated)
    return palette


@njit(cache=True, nogil=True)
def _render(labels, lut32, out32):  # pragma: no cover - compiled
    """out32[i] = lut32[labels[i]] over flat arrays: one 4-byte store per pixel (B, G, R, 0 in memory order)."""
    for i in range(labels.size):
        out32[i] = lut32[labels[i]]


def render_bgr(labels: np.ndarray, palette_rgb: np.ndarray) -> np.ndarray:
    """HxW uint16 label map -> HxWx3 uint8 BGR (C-contiguous, ready for cv2.imencode) through the RGB palette.

    Pixels are looked up as packed 32-bit BGRx words, then cv2 drops the 4th byte with SIMD: ~2x faster than
    writing three separate bytes per pixel (1.9 vs 3.6 ms at 1500x2250)."""
    if int(labels.max(initial=0)) >= len(palette_rgb):
        raise ValueError(f"label {int(labels.max())} has no palette entry ({len(palette_rgb)} colours)")
    rgb = palette_rgb.astype(np.uint32)
    lut32 = rgb[:, 2] | (rgb[:, 1] << 8) | (rgb[:, 0] << 16)  # little-endian bytes: B, G, R, 0
    flat = np.ascontiguousarray(labels, np.uint16).ravel()
    packed = np.empty(flat.size, np.uint32)
    _render(flat, lut32, packed)
    bgrx = packed.view(np.uint8).reshape(*labels.shape, 4)
    return cv2.cvtColor(bgrx, cv2.COLOR_BGRA2BGR)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes via cv2 with default params (measured ~2x faster than an explicit compression level)."""
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"cv2 could not PNG-encode an array of shape {img.shape} dtype {img.dtype}")
    return buf.tobytes()


def _is_rgb8_png(data: bytes) -> bool:
    # IHDR is always the first chunk: bit depth at byte 24, colour type at byte 25 (2 = truecolour, no alpha).
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[24] == 8 and data[25] == 2


def sam_target(data: bytes | dict, height: int, width: int) -> tuple[np.ndarray, bytes]:
    """Decode a ready-made colour mask; NEAREST-resize it to the image if needed. Returns (BGR, RGB PNG bytes).

    The original bytes are kept when they already are an 8-bit RGB PNG of the right size (no re-encode).
    """
    if isinstance(data, dict):
        data = data.get("bytes")
    if not data:
        raise BadTarget("sam_mask is empty; the ready-made colour mask file is missing or zero bytes")
    try:  # same guards as for images: pixel limit before decoding, and no truncated streams
        mask_w, mask_h = header_size(data)
        check_complete(data)
    except BadImage as exc:
        raise BadTarget(f"sam_mask: {exc}") from None
    if mask_w * mask_h > DEFAULT_MAX_PIXELS:
        raise BadTarget(f"sam_mask is {mask_w}x{mask_h}, over the {DEFAULT_MAX_PIXELS / 1e6:.0f} MP limit")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise BadTarget(f"sam_mask ({len(data)} bytes) cannot be decoded; re-extract the sam_mask PNG")
    if bgr.shape[:2] != (height, width):
        # NEAREST_EXACT samples pixel centres (like PIL NEAREST); interpolating would blend instance colours.
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    elif _is_rgb8_png(data):
        return bgr, bytes(data)
    return bgr, encode_png(bgr)


def _image_size(batch: Batch, i: int) -> tuple[int, int]:
    bgr = batch["_bgr"][i] if "_bgr" in batch else None
    if bgr is not None:
        return int(bgr.shape[0]), int(bgr.shape[1])
    height, width = batch.get("height", [None] * (i + 1))[i], batch.get("width", [None] * (i + 1))[i]
    if height is None or width is None:
        raise ValueError(f"row {batch['key'][i]}: image size unknown; run DecodeImage before SegTarget")
    return int(height), int(width)


class SegTarget:
    """Step: `seg` PNG per ok row, plus transient `_labels` (painted label map) or `_seg_bgr` (SAM-SGT mask).

    A `sam_mask` wins when present; otherwise `annotations` are painted (area-descending) and coloured.
    """

    outputs = ("seg", "_labels", "_seg_bgr")

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def setup(self) -> None:
        """Load (or compile once per machine) the numba kernels before the first real sample."""
        warm_up()
        render_bgr(np.ones((2, 2), np.uint16), make_palette(1, "warm-up", self.seed))

    def _row(self, batch: Batch, i: int) -> dict[str, Any]:
        height, width = _image_size(batch, i)
        sam = batch["sam_mask"][i] if "sam_mask" in batch else None
        if sam is not None:
            bgr, png = sam_target(sam, height, width)
            return {"seg": png, "_labels": None, "_seg_bgr": bgr}
        annotations = batch["annotations"][i] if "annotations" in batch else None
        if annotations is None:
            raise BadAnnotations(
                "no masks for this sample: annotations and sam_mask are both missing; "
                "check the source ships the sa_<id>.json or sam_mask PNG for this image"
            )
        labels = paint_annotations(annotations, height, width)
        palette = make_palette(len(annotations), batch["key"][i], self.seed)
        return {"seg": encode_png(render_bgr(labels, palette)), "_labels": labels, "_seg_bgr": None}

    def __call__(self, batch: Batch) -> Batch:
        return map_ok_rows(batch, self._row, self.outputs)

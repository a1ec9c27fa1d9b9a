"""Paint SA-1B compressed COCO RLE masks straight into one uint16 label map.

Why not `pycocotools.mask.decode`: it allocates an HxW array per mask (~1 s for 100 masks at 1500x2250). Here a
numba kernel parses every compressed `counts` string into run boundaries (one cheap pass, which also validates the
string and measures each mask's area), and a second kernel writes each mask's 1-runs into a single flat buffer in
column-major order (the order RLE runs are laid out in), so no per-mask temporaries exist.

Paint order is area-descending, ties broken by annotation order (stable), so smaller masks land on top.
Label k (1-based) is the k-th mask painted; 0 = unlabelled. The area is measured from the runs themselves, so a
missing or stale `area` field cannot change the order (for SA-1B the two agree).

Compressed counts format (pycocotools `rleFrString`): each count is written as 5-bit groups, low bits first, one
char per group (value + 48); bit 0x20 says another group follows; bit 0x10 of the last group is the sign. From the
fourth count on, the stored value is a delta to the count two positions earlier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from numba import njit

from sgt_data.errors import BadRLE

MAX_LABELS = int(np.iinfo(np.uint16).max)

# Kernel error codes (kept as ints: numba kernels cannot raise rich exceptions cheaply).
_OK, _BAD_CHAR, _TRUNCATED, _TOO_LONG, _NEGATIVE, _OVERFLOW, _SHORT = range(7)
_MAX_GROUPS = 7  # 35 bits: enough for any count up to 2**32, keeps the shift well inside int64


@njit(cache=True, nogil=True)
def _parse(buf, offsets, n_pixels, ends, end_offsets, areas):  # pragma: no cover - compiled
    """Parse every counts string; write cumulative run ends and per-mask areas.

    Returns (code, mask index, detail); detail is the count index, or the char offset for bad chars, or the
    total pixel count for strings that end short. n_pixels < 0 skips the size checks (for `parse_counts`).
    """
    w = 0
    for j in range(offsets.shape[0] - 1):
        end_offsets[j] = w
        p = offsets[j]
        stop = offsets[j + 1]
        m = 0
        total = 0
        area = 0
        back2 = 0  # count m-2
        back1 = 0  # count m-1
        while p < stop:
            x = 0
            k = 0
            more = True
            while more:
                if p >= stop:
                    return _TRUNCATED, j, m
                c = np.int64(buf[p]) - 48
                if c < 0 or c > 63:
                    return _BAD_CHAR, j, p - offsets[j]
                if k >= _MAX_GROUPS:
                    return _TOO_LONG, j, m
                x |= (c & 0x1F) << (5 * k)
                more = (c & 0x20) != 0
                p += 1
                k += 1
                if not more and (c & 0x10) != 0:
                    x -= np.int64(1) << (5 * k)  # sign-extend the last group
            if m > 2:
                x += back2
            if x < 0:
                return _NEGATIVE, j, m
            total += x
            if n_pixels >= 0 and total > n_pixels:
                return _OVERFLOW, j, m
            if m & 1:
                area += x
            ends[w] = total
            w += 1
            back2 = back1
            back1 = x
            m += 1
        if n_pixels >= 0 and total != n_pixels:
            return _SHORT, j, total
        areas[j] = area
    end_offsets[offsets.shape[0] - 1] = w
    return _OK, -1, 0


@njit(cache=True, nogil=True)
def _fill(flat, ends, end_offsets, order):  # pragma: no cover - compiled
    """Write the 1-runs of mask order[r] with label r + 1, in order (later masks overwrite)."""
    for r in range(order.shape[0]):
        j = order[r]
        label = np.uint16(r + 1)
        a = end_offsets[j]
        start = 0
        for i in range(a, end_offsets[j + 1]):
            e = ends[i]
            if (i - a) & 1:
                # A slice fill vectorises; an index loop pays numba's wraparound checks (7x slower).
                flat[start:e] = label
            start = e


def _pack(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the counts strings into one uint8 buffer plus int64 start offsets (n + 1)."""
    offsets = np.zeros(len(strings) + 1, np.int64)
    np.cumsum([len(s) for s in strings], out=offsets[1:])
    return np.frombuffer(b"".join(strings), np.uint8), offsets


def _run_parse(buf: np.ndarray, offsets: np.ndarray, n_pixels: int):
    n = offsets.shape[0] - 1
    ends = np.empty(max(buf.shape[0], 1), np.int64)  # never more counts than chars
    end_offsets = np.zeros(n + 1, np.int64)
    areas = np.zeros(n, np.int64)
    code, j, detail = _parse(buf, offsets, np.int64(n_pixels), ends, end_offsets, areas)
    return int(code), int(j), int(detail), ends, end_offsets, areas


def _describe(code: int, detail: int, raw: bytes, n_pixels: int) -> str:
    if code == _BAD_CHAR:
        char = bytes(raw[detail : detail + 1])
        return f"counts has byte {char!r} at offset {detail}; valid chars are '0'..'o' (ASCII 48-111)"
    if code == _TRUNCATED:
        return f"counts ends inside count #{detail} (its last char still has the 'more' bit 0x20 set)"
    if code == _TOO_LONG:
        return f"count #{detail} uses more than {_MAX_GROUPS} chars (value too large for any image)"
    if code == _NEGATIVE:
        return f"count #{detail} decodes to a negative run length"
    if code == _OVERFLOW:
        return f"runs overflow the image at count #{detail} (sum > h*w = {n_pixels})"
    return f"runs cover {detail} pixels but the image has h*w = {n_pixels}"


def parse_counts(counts: str | bytes) -> np.ndarray:
    """Decode one compressed COCO RLE counts string into its run lengths (int64), without size checks."""
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    buf, offsets = _pack([raw])
    code, _, detail, ends, end_offsets, _ = _run_parse(buf, offsets, -1)
    if code != _OK:
        raise BadRLE(_describe(code, detail, raw, -1))
    return np.diff(ends[: end_offsets[1]], prepend=0)


def _counts_bytes(ann: dict[str, Any], height: int, width: int) -> bytes:
    """Check one annotation's RLE size and return its counts as ASCII bytes (BadRLE naming the id)."""
    if not isinstance(ann, dict):
        raise BadRLE(f"annotation is {type(ann).__name__}, not a dict with an RLE; check the annotation JSON")
    rle = ann.get("segmentation", ann)  # accept raw SA-1B entries and the flattened form
    ann_id = ann.get("id", "?")
    size = rle.get("size") if isinstance(rle, dict) else None
    counts = rle.get("counts") if isinstance(rle, dict) else None
    if size is None or counts is None:
        raise BadRLE(f"annotation id {ann_id}: no RLE 'size'/'counts'; expected SA-1B compressed COCO RLE")
    if not isinstance(size, list | tuple) or list(size) != [height, width]:
        raise BadRLE(
            f"annotation id {ann_id}: RLE size {size} != image size [{height}, {width}] ([h, w]); "
            "the masks belong to another resolution of this image"
        )
    if isinstance(counts, str):
        try:
            return counts.encode("ascii")
        except UnicodeEncodeError:
            raise BadRLE(
                f"annotation id {ann_id}: counts string is not ASCII; expected compressed COCO RLE"
            ) from None
    if isinstance(counts, bytes | bytearray):
        return bytes(counts)
    raise BadRLE(
        f"annotation id {ann_id}: counts is {type(counts).__name__}, not a compressed string; "
        "convert uncompressed RLE with pycocotools.mask.frPyObjects"
    )


def paint_annotations(annotations: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Paint SA-1B RLE annotations into an HxW uint16 label map (0 = unlabelled, k = k-th painted).

    Returns a C-contiguous array (cv2's SIMD transpose of the column-major paint buffer: ~1 ms at 1500x2250,
    5-15x faster than numpy's copy), so every consumer downstream reads rows.
    Raises BadRLE naming the annotation id for a size mismatch, malformed counts or more than 65535 masks.
    """
    n = len(annotations)
    n_pixels = height * width
    if n > MAX_LABELS:
        raise BadRLE(
            f"{n} masks but a uint16 label map holds at most {MAX_LABELS}; drop the smallest masks first"
        )
    flat = np.zeros(n_pixels, np.uint16)
    if n:
        raws = [_counts_bytes(ann, height, width) for ann in annotations]
        buf, offsets = _pack(raws)
        code, j, detail, ends, end_offsets, areas = _run_parse(buf, offsets, n_pixels)
        if code != _OK:
            ann_id = annotations[j].get("id", f"#{j}")
            raise BadRLE(f"annotation id {ann_id}: {_describe(code, detail, raws[j], n_pixels)}")
        order = np.argsort(-areas, kind="stable")
        _fill(flat, ends, end_offsets, order)
    return cv2.transpose(flat.reshape(width, height))


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the kernels so the first real sample is not slow."""
    paint_annotations([{"id": 0, "size": [2, 2], "counts": "0200"}], 2, 2)

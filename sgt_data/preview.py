"""`sgt-data show DIR`: a contact sheet (image | seg | edge | depth per row) and per-level stats of a build.

The sheet is what a person looks at first to trust a build: the targets line up with their images, colours are
distinct, edges sit on boundaries. Stats come from the manifest and the shards (rows per status, per-level fill).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from sgt_data import shards

TILE = 256


def _decode(png_or_jpeg: bytes | None) -> np.ndarray | None:
    import cv2

    if not png_or_jpeg:
        return None
    img = cv2.imdecode(np.frombuffer(png_or_jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if img.dtype == np.uint16:  # 16-bit depth: show as 8-bit
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img[..., :3]


def _tile(img: np.ndarray | None, width: int, height: int) -> np.ndarray:
    import cv2

    canvas = np.full((height, width, 3), 40, np.uint8)
    if img is None:
        return canvas
    scale = min(width / img.shape[1], height / img.shape[0])
    w, h = max(1, int(img.shape[1] * scale)), max(1, int(img.shape[0] * scale))
    small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    y, x = (height - h) // 2, (width - w) // 2
    canvas[y : y + h, x : x + w] = small
    return canvas


def contact_sheet(folder: Path, rows: int = 8, tile: int = TILE) -> np.ndarray:
    """BGR image: one row per sample (ok rows first), columns image + each level present in the shards."""
    import cv2

    manifest = shards.read_manifest(folder)
    levels = [lv for lv in shards.LEVELS if lv in manifest.get("levels", [])]
    header = ["image", *levels]
    picked = []
    for row in shards.iter_rows(folder, ["key", "image", *levels, "status"]):
        if row["status"] == "ok":
            picked.append(row)
        if len(picked) >= rows:
            break
    lines = []
    label_h = 28
    for row in picked:
        tiles = [_tile(_decode((row.get(c) or {}).get("bytes")), tile, tile) for c in header]
        line = np.concatenate(tiles, axis=1)
        cv2.putText(line, row["key"], (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        lines.append(line)
    top = np.full((label_h, tile * len(header), 3), 20, np.uint8)
    for i, name in enumerate(header):
        cv2.putText(
            top, name, (i * tile + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA
        )
    return np.concatenate([top, *lines], axis=0) if lines else top


def level_stats(folder: Path) -> dict[str, dict]:
    """Per level: rows with a target, mean target bytes; plus counts per status from the manifest."""
    manifest = shards.read_manifest(folder)
    levels = manifest.get("levels", [])
    stats = {lv: {"rows": 0, "bytes": 0} for lv in levels}
    for row in shards.iter_rows(folder, [*levels, "status"], ok_only=True):
        for lv in levels:
            target = row.get(lv)
            if target and target.get("bytes"):
                stats[lv]["rows"] += 1
                stats[lv]["bytes"] += len(target["bytes"])
    for s in stats.values():
        s["mean_kb"] = round(s["bytes"] / max(1, s["rows"]) / 1024, 1)
    return {"counts": manifest.get("counts", {}), "rows": manifest.get("rows"), "levels": stats}


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="a folder written by `sgt-data build`")
    parser.add_argument("--out", help="contact sheet PNG path (default: FOLDER/contact_sheet.png)")
    parser.add_argument("--rows", type=int, default=8, help="samples on the sheet (default 8)")


def run(args) -> int:
    import cv2

    folder = Path(args.folder)
    try:
        sheet = contact_sheet(folder, rows=args.rows)
        stats = level_stats(folder)
    except FileNotFoundError as e:
        print(f"sgt-data show: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else folder / "contact_sheet.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)
    print(f"rows: {stats['rows']}  by status: {stats['counts']}")
    for level, s in stats["levels"].items():
        print(f"  {level:<6} {s['rows']:>7} targets, mean {s['mean_kb']} KB")
    print(f"contact sheet: {out}")
    return 0

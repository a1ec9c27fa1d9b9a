"""Make `examples/llava_ov/`: a tiny LLaVA-OneVision-shaped dataset for the demo, CI and offline tests.

Layout as on the Hub: one folder per config (names with parentheses and commas, verbatim), Parquet files
`train-0000N-of-0000M.parquet` with columns id, image (struct bytes/path; null for the text-only config),
conversations (list of {from, value} with `<image>` placeholders) and data_source, small row groups so the
row-group sampler has something to choose from. Images are drawn here (shapes, digits, words) and encoded as
JPEG or PNG; questions and answers describe what was drawn, so the data is consistent, if trivial.

Deterministic: fixed seeds, fixed encoder settings. Run: `.venv/bin/python examples/make_llava_ov.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "llava_ov"
ROW_GROUP = 3
COLORS = {"red": (0, 0, 220), "green": (0, 170, 0), "blue": (220, 60, 0), "yellow": (0, 210, 230)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("SGT", "SAM", "EDGE", "DEPTH", "VQA", "BAGEL")

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", IMAGE_TYPE),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("data_source", pa.string()),
    ],
    metadata={
        b"huggingface": json.dumps(
            {
                "info": {
                    "features": {
                        "id": {"dtype": "string", "_type": "Value"},
                        "image": {"_type": "Image"},
                        "conversations": [
                            {
                                "from": {"dtype": "string", "_type": "Value"},
                                "value": {"dtype": "string", "_type": "Value"},
                            }
                        ],
                        "data_source": {"dtype": "string", "_type": "Value"},
                    }
                }
            }
        ).encode()
    },
)


def canvas(rng: np.random.Generator, w: int = 64, h: int = 48) -> np.ndarray:
    base = rng.integers(200, 256, size=3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = base
    return img


def draw_shape(img: np.ndarray, shape: str, color: tuple[int, int, int], cx: int, cy: int, r: int) -> None:
    if shape == "circle":
        cv2.circle(img, (cx, cy), r, color, -1, lineType=cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], color, lineType=cv2.LINE_AA)


def encode(img: np.ndarray, fmt: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 85] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    ok, buf = cv2.imencode(f".{fmt}", img, params)
    assert ok
    return buf.tobytes()


def turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


def shape_rows(rng: np.random.Generator, n: int, prefix: str) -> list[dict]:
    """One coloured shape per image: 'what shape / what colour' (diagram-style VQA)."""
    rows = []
    for i in range(n):
        img = canvas(rng)
        shape, color = SHAPES[i % 3], list(COLORS)[int(rng.integers(len(COLORS)))]
        draw_shape(img, shape, COLORS[color], 32, 24, 14)
        conv = turns(("<image>\nWhat shape is drawn, and in which colour?", f"A {color} {shape}."))
        rows.append(
            {
                "id": f"{prefix}_{i:03d}",
                "image": encode(img, "png" if i % 2 else "jpg"),
                "conversations": conv,
            }
        )
    return rows


def count_rows(rng: np.random.Generator, n: int, prefix: str) -> list[dict]:
    """Several shapes per image: 'how many' (counting, math-style)."""
    rows = []
    for i in range(n):
        img = canvas(rng)
        k = int(rng.integers(1, 5))
        for j in range(k):
            draw_shape(img, SHAPES[j % 3], COLORS["blue"], 9 + 15 * j, 24, 6)
        conv = turns(
            ("<image>\nHow many shapes are in the picture?", f"There are {k}."),
            ("And how many would there be after adding two more?", f"{k + 2}."),
        )
        rows.append({"id": f"{prefix}_{i:03d}", "image": encode(img, "jpg"), "conversations": conv})
    return rows


def word_rows(rng: np.random.Generator, n: int, prefix: str) -> list[dict]:
    """A printed word per image: OCR-style captions."""
    rows = []
    for i in range(n):
        img = canvas(rng, 80, 32)
        word = WORDS[i % len(WORDS)]
        cv2.putText(img, word, (4, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (20, 20, 20), 2, cv2.LINE_AA)
        conv = turns(("<image>\nRead the text in the image.", word))
        rows.append({"id": f"{prefix}_{i:03d}", "image": encode(img, "png"), "conversations": conv})
    return rows


def text_rows(rng: np.random.Generator, n: int, prefix: str) -> list[dict]:
    """Text-only instruction rows (image is null), like magpie_pro."""
    rows = []
    for i in range(n):
        a, b = (int(x) for x in rng.integers(2, 13, size=2))
        conv = turns((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
        rows.append({"id": f"{prefix}_{i:03d}", "image": None, "conversations": conv})
    return rows


# config -> (row maker, rows, files)
CONFIGS = {
    "vision_flan(filtered)": (shape_rows, 6, 1),
    "ai2d(cauldron,llava_format)": (shape_rows, 8, 2),
    "geo170k(qa)": (count_rows, 6, 1),
    "textcaps": (word_rows, 6, 1),
    "magpie_pro(l3_80b_st)": (text_rows, 6, 1),
}


def write_config(name: str, rows: list[dict], files: int) -> None:
    folder = OUT / name
    folder.mkdir(parents=True)
    per = -(-len(rows) // files)
    for f in range(files):
        part = rows[f * per : (f + 1) * per]
        table = pa.Table.from_pylist(
            [
                {
                    "id": r["id"],
                    "image": None if r["image"] is None else {"bytes": r["image"], "path": None},
                    "conversations": r["conversations"],
                    "data_source": name,
                }
                for r in part
            ],
            schema=SCHEMA,
        )
        pq.write_table(table, folder / f"train-{f:05d}-of-{files:05d}.parquet", row_group_size=ROW_GROUP)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    for k, (name, (maker, n, files)) in enumerate(CONFIGS.items()):
        rng = np.random.default_rng(1000 + k)
        prefix = name.split("(")[0]
        write_config(name, maker(rng, n, prefix), files)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({sum(n for _, n, _ in CONFIGS.values())} rows, {size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()

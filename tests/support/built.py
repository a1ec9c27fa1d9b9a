"""Small built folders in the canonical schema, shared by the validate, push, training and port tests.

Everything is written with the real shard writer (`sgt_data.shards`), so the tests read what a build writes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import yaml

from sgt_data import shards

LEVELS = ("seg", "edge")


def png(seed: int, size: tuple[int, int] = (12, 8), mode: str = "RGB") -> bytes:
    """A tiny deterministic PNG (distinct per seed)."""
    from PIL import Image

    img = Image.new(
        mode, size, color=(seed * 37 % 256, seed * 11 % 256, 200) if mode == "RGB" else seed % 256
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def proxy_rows(start: int, n: int, bad: set[int] = frozenset()) -> dict[str, list]:
    """Columns of `n` proxy rows (seg + edge); rows in `bad` are `bad_image` error rows."""
    cols: dict[str, list] = {c: [] for c in shards.sample_columns(LEVELS)}
    for i in range(start, start + n):
        ok = i not in bad
        cols["key"].append(f"sa_{i}")
        cols["source"].append("sa1b")
        cols["origin"].append(f"sa_{i}.jpg")
        cols["image"].append(png(i))
        cols["width"].append(12)
        cols["height"].append(8)
        cols["seg"].append(png(i + 100) if ok else None)
        cols["prompt_seg"].append("Segment instances with different colors." if ok else None)
        cols["edge"].append(png(i + 200, mode="L") if ok else None)
        cols["prompt_edge"].append("Detect the edges in this image." if ok else None)
        cols["status"].append("ok" if ok else "bad_image")
        cols["error"].append(None if ok else f"sa_{i}.jpg: truncated JPEG; re-download the tar")
    return cols


def make_folder(out: Path, shard_rows: tuple[int, ...] = (5, 4), bad: set[int] = frozenset({3})) -> Path:
    """A complete `build proxies` folder: shards, stats, markers and a manifest like the build writes."""
    start = 0
    for index, n in enumerate(shard_rows):
        table = shards.to_table(proxy_rows(start, n, bad), shards.sample_columns(LEVELS))
        shards.finish_shard(out, index, table)
        start += n
    shards.write_manifest(
        out,
        kind="proxies",
        levels=list(LEVELS),
        command=["sgt-data", "build", "proxies", "--level", "seg,edge", "--input", "examples/sa1b"],
        spec={"seed": 0, "levels": {"seg": {"palette": "random"}, "edge": {"source": "image"}}},
        steps=[{"name": "seg", "version": "1"}, {"name": "edge", "version": "1"}],
        inputs=["examples/sa1b"],
        inputs_total=start,
    )
    return out


def random_image(rng: np.random.Generator, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_fixture_shards(root: Path, n_proxy: int = 14, n_vqa: int = 9) -> tuple[Path, Path]:
    """Tiny proxy and VQA folders in the canonical schema (written by our shard writer, 2 shards each)."""
    rng = np.random.default_rng(0)
    proxy, vqa = root / "proxies", root / "vqa"
    cols = shards.sample_columns(["seg", "edge"])
    for index, part in enumerate(np.array_split(np.arange(n_proxy), 2)):
        rows: dict[str, list] = {c: [] for c in cols}
        for i in part:
            bad = i % 7 == 3  # a few error rows that must never be trained on
            for c, v in {
                "key": f"sa_{i}",
                "source": "fixture",
                "origin": "test",
                "image": random_image(rng, "JPEG"),
                "width": 32,
                "height": 24,
                "seg": None if bad else random_image(rng),
                "prompt_seg": "Segment instances with different colors.",
                "edge": None if bad else random_image(rng),
                "prompt_edge": "Draw the edges.",
                "status": "bad_rle" if bad else "ok",
                "error": "fixture error" if bad else None,
            }.items():
                rows[c].append(v)
        shards.write_table_atomic(
            shards.to_table(rows, cols), proxy / shards.shard_name(index), row_group_size=4
        )
    for index, part in enumerate(np.array_split(np.arange(n_vqa), 2)):
        rows = {c: [] for c in shards.VQA_COLUMNS}
        for i in part:
            has_image = bool(i % 3)  # some text-only rows, as in the real mix
            question = "<image>\nWhat colour?" if has_image else "Name a colour."
            conv = [{"from": "human", "value": question}, {"from": "gpt", "value": f"Colour {i}."}]
            for c, v in {
                "key": f"q{i}",
                "source": "fixture",
                "category": "General",
                "origin": "test",
                "image": random_image(rng, "JPEG") if has_image else None,
                "conversations": conv,
                "status": "ok",
                "error": None,
            }.items():
                rows[c].append(v)
        table = shards.to_table(rows, shards.VQA_COLUMNS)
        shards.write_table_atomic(table, vqa / shards.shard_name(index), row_group_size=4)
    return proxy, vqa


def write_recipe(path: Path, proxy: Path, vqa: Path, out: Path, **blocks) -> Path:
    data = {
        "model": {"name": "toy", "init": "random", "options": {"micro_batch_size": 2}},
        "data": {"proxies": [str(proxy)], "vqa": [str(vqa)], "num_workers": 0},
        "mixing": {"ratio": {"seg": 2, "vqa": 1}, "samples_per_step": 6},
        "loss_weights": {"ce": 1.5, "mse": 1.0},
        "optim": {"lr": 1e-2, "warmup_steps": 2, "schedule": "cosine"},
        "train": {"output_dir": str(out), "max_steps": 4, "mixed_precision": "fp32", "progress": False},
    }
    for block, values in blocks.items():
        data.setdefault(block, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return path

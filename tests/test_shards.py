"""Canonical shards: schema metadata, atomic writes, markers, manifest, and `datasets` reading them as images."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sgt_data import shards


def _png(color: tuple[int, int, int], size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _proxy_rows(n: int) -> dict[str, list]:
    rows = {c: [] for c in shards.sample_columns(["seg", "edge"])}
    for i in range(n):
        rows["key"].append(f"sa_{i}")
        rows["source"].append("test")
        rows["origin"].append(f"/in/sa_{i}.jpg")
        rows["image"].append(_png((i, 0, 0)))
        rows["width"].append(8)
        rows["height"].append(6)
        rows["seg"].append(_png((0, i, 0)))
        rows["prompt_seg"].append("Segment instances with different colors.")
        rows["edge"].append(_png((0, 0, i)))
        rows["prompt_edge"].append("Draw the edges.")
        rows["status"].append("ok" if i else "bad_image")
        rows["error"].append(None if i else "sa_0.jpg: truncated JPEG")
    return rows


def test_schema_carries_datasets_image_features():
    schema = shards.schema_for(shards.sample_columns(["seg", "edge", "depth"]))
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert features["seg"] == {"_type": "Image"} and features["depth"] == {"_type": "Image"}
    assert features["status"]["dtype"] == "string"
    with pytest.raises(KeyError, match="no canonical column"):
        shards.schema_for(["key", "nonsense"])


def test_finish_shard_writes_shard_stats_marker_and_manifest(tmp_path):
    table = shards.to_table(_proxy_rows(3), shards.sample_columns(["seg", "edge"]))
    stats = shards.finish_shard(tmp_path, 7, table)
    assert (tmp_path / "shard-00007.parquet").exists()
    assert shards.is_complete(tmp_path, 7) and not shards.is_complete(tmp_path, 6)
    assert stats["status"] == {"bad_image": 1, "ok": 2}
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must be renamed away"
    manifest = shards.write_manifest(tmp_path, kind="proxies", inputs_total=3)
    assert manifest["rows"] == 3 and manifest["counts"] == {"bad_image": 1, "ok": 2}
    assert shards.read_manifest(tmp_path)["kind"] == "proxies"
    assert pq.read_table(tmp_path / "shard-00007.parquet").column("image").type == shards.IMAGE_TYPE


def test_same_rows_give_byte_identical_shards(tmp_path):
    rows = _proxy_rows(4)
    for name in ("a", "b"):
        shards.finish_shard(tmp_path / name, 0, shards.to_table(rows, shards.sample_columns(["seg", "edge"])))
    a = (tmp_path / "a" / "shard-00000.parquet").read_bytes()
    assert a == (tmp_path / "b" / "shard-00000.parquet").read_bytes()


def test_datasets_load_dataset_returns_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    shards.finish_shard(tmp_path, 0, shards.to_table(_proxy_rows(3), shards.sample_columns(["seg", "edge"])))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "shard-*.parquet"), split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    row = ds[2]
    for column, channel in (("image", 0), ("seg", 1), ("edge", 2)):
        assert isinstance(row[column], Image.Image)
        assert np.asarray(row[column])[0, 0, channel] == 2
    assert ds[0]["status"] == "bad_image"


def test_vqa_shards_keep_conversations_and_null_images(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {
        "key": ["q0", "q1"],
        "source": ["mathqa", "chartqa(cauldron,llava_format)"],
        "category": ["Math_Reasoning", "Doc_Chart_Screen"],
        "origin": ["f.parquet:0:0", "g.parquet:1:5"],
        "image": [None, _png((9, 9, 9))],
        "conversations": [
            [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
            [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A bar."}],
        ],
        "status": ["ok", "ok"],
        "error": [None, None],
    }
    shards.finish_shard(tmp_path, 0, shards.to_table(rows, shards.VQA_COLUMNS))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "shard-*.parquet"), split="train")
    assert ds[0]["image"] is None and isinstance(ds[1]["image"], Image.Image)
    assert ds[1]["conversations"][1] == {"from": "gpt", "value": "A bar."}

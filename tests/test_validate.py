"""`sgt-data validate`: a complete folder passes; each kind of damage is named with its file and fix.

`make_folder` builds a small real folder with the lead's shard writer; the push tests reuse it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgt_data import shards
from sgt_data.validate import ERROR, PARTIAL, validate

LEVELS = ("seg", "edge")


def _png(seed: int, size: tuple[int, int] = (12, 8), mode: str = "RGB") -> bytes:
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
        cols["image"].append(_png(i))
        cols["width"].append(12)
        cols["height"].append(8)
        cols["seg"].append(_png(i + 100) if ok else None)
        cols["prompt_seg"].append("Segment instances with different colors." if ok else None)
        cols["edge"].append(_png(i + 200, mode="L") if ok else None)
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


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "built")


def _messages(report) -> str:
    return "\n".join(p.message for p in report.problems)


def test_complete_folder_is_ok(folder: Path):
    report = validate(folder)
    assert report.ok, report.summary()
    assert report.rows == 9
    assert report.counts == {"bad_image": 1, "ok": 8}
    assert [p.name for p in report.complete_shards] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert report.kind == "proxies"


def test_missing_marker_is_partial(folder: Path):
    (folder / "completions" / "shard-00001").unlink()
    report = validate(folder)
    assert report.partial and not report.ok
    assert "shard-00001.parquet has no completion marker" in _messages(report)
    assert [p.name for p in report.complete_shards] == ["shard-00000.parquet"]


def test_marker_without_shard_is_error(folder: Path):
    (folder / "shard-00001.parquet").unlink()
    report = validate(folder)
    assert any(p.severity == ERROR and "completions/shard-00001 has no" in p.message for p in report.problems)


def test_stats_disagreeing_with_shard_is_error(folder: Path):
    stats = folder / "stats" / "shard-00000.json"
    data = json.loads(stats.read_text())
    data["status"] = {"ok": 5}
    stats.write_text(json.dumps(data))
    report = validate(folder)
    assert report.errors
    assert "shard-00000.json: status" in _messages(report)


def test_manifest_counts_must_match(folder: Path):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["counts"] = {"ok": 9}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = validate(folder)
    assert "manifest.json counts" in _messages(report) and report.errors


def test_inputs_total_counts_in_equal_out(folder: Path):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inputs_total"] = 12
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = validate(folder)
    assert report.partial
    assert "counted 12 input samples but the shards hold 9 rows" in _messages(report)
    manifest["inputs_total"] = 7
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert validate(folder).errors


def test_schema_must_be_canonical(folder: Path):
    path = folder / "shard-00001.parquet"
    table = pq.read_table(path)
    bad = table.set_column(table.schema.get_field_index("width"), "width", table["width"].cast(pa.int64()))
    pq.write_table(bad, path)
    report = validate(folder)
    assert "column 'width' has type int64, expected int32" in _messages(report)


def test_wrong_columns_for_kind(tmp_path: Path):
    out = make_folder(tmp_path / "b")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["levels"] = ["seg", "edge", "depth"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert "expected" in _messages(validate(out))


def test_missing_manifest_is_partial(folder: Path):
    (folder / "manifest.json").unlink()
    report = validate(folder)
    assert [p.severity for p in report.problems] == [PARTIAL]


def test_not_a_build_folder(tmp_path: Path):
    report = validate(tmp_path)
    assert "holds no shard-*.parquet files" in _messages(report)


def test_cli_exit_codes(folder: Path, capsys):
    from sgt_data.cli import main

    assert main(["validate", str(folder)]) == 0
    assert "OK" in capsys.readouterr().out
    (folder / "completions" / "shard-00000").unlink()
    assert main(["validate", str(folder), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["partial"] is True and out["shards"] == ["shard-00001.parquet"]


def test_duplicate_keys_are_errors(tmp_path: Path):
    out = tmp_path / "dup"
    shards.finish_shard(out, 0, shards.to_table(proxy_rows(0, 3), shards.sample_columns(LEVELS)))
    shards.finish_shard(out, 1, shards.to_table(proxy_rows(2, 3), shards.sample_columns(LEVELS)))
    shards.write_manifest(out, kind="proxies", levels=list(LEVELS))
    report = validate(out)
    assert (
        report.errors
        and "1 duplicate key(s): 'sa_2' in shard-00000.parquet and shard-00001.parquet" in _messages(report)
    )

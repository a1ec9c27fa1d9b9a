"""`sgt-data validate`: a complete folder passes; each kind of damage is named with its file and fix.

`make_folder` (tests/support/built.py) builds a small real folder with our shard writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.built import LEVELS, make_folder, proxy_rows

from sgt_data import shards
from sgt_data.validate import ERROR, PARTIAL, validate


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

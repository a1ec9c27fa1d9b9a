"""`sgt-data build llava-ov --source examples/llava_ov` end to end on the session's local Ray: counts, original
image bytes, `datasets` loading, resume, refusal of a different request, and shards identical whatever runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sgt_data import shards
from sgt_data.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "llava_ov"

pytestmark = pytest.mark.integration


def _build(out: Path, *extra: str) -> int:
    argv = [
        "build",
        "llava-ov",
        "--source",
        str(SAMPLE),
        "--pipeline",
        "llava_ov_sample",
        "--output",
        str(out),
    ]
    return main([*argv, "--no-progress", *extra])


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in shards.list_shards(out)}


@pytest.fixture(scope="module")
def built(ray_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ov") / "out"
    assert _build(out) == 0
    return out


def test_sample_build_counts_and_manifest(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["kind"] == "vqa" and manifest["rows"] == 22 and manifest["counts"] == {"ok": 22}
    assert manifest["inputs_total"] == 22
    per = {name: (c["category"], c["counts"]) for name, c in manifest["configs"].items()}
    assert per == {
        "vision_flan(filtered)": ("General", {"ok": 4}),
        "ai2d(cauldron,llava_format)": ("Doc_Chart_Screen", {"ok": 6}),
        "geo170k(qa)": ("Math_Reasoning", {"ok": 4}),
        "textcaps": ("General_OCR", {"ok": 4}),
        "magpie_pro(l3_80b_st)": ("Language", {"ok": 4}),
    }
    # Every kept row is recorded as (config, file, row group, row), and matches the rows' origin column.
    recorded = {
        f"{path}:{rg}:{row}"
        for c in manifest["configs"].values()
        for path, groups in c["sample"].items()
        for rg, rows in groups.items()
        for row in rows
    }
    origins = {r["origin"] for r in shards.iter_rows(built, ["origin"])}
    assert recorded == origins and len(origins) == 22
    assert main(["validate", str(built)]) == 0


def test_images_are_the_original_bytes_and_text_only_rows_are_null(built):
    for row in shards.iter_rows(built, ["origin", "image", "conversations", "source"]):
        path, rg, idx = row["origin"].rsplit(":", 2)
        original = pq.ParquetFile(SAMPLE / path).read_row_group(int(rg)).slice(int(idx), 1).to_pylist()[0]
        assert row["conversations"] == original["conversations"]
        if row["source"] == "magpie_pro(l3_80b_st)":
            assert row["image"] is None and original["image"] is None
        else:
            assert row["image"]["bytes"] == original["image"]["bytes"]


def test_datasets_loads_our_output(built):
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=[str(p) for p in shards.list_shards(built)], split="train"
    )
    assert len(ds) == 22
    assert isinstance(ds.features["image"], datasets.Image)
    first = ds[0]
    assert first["image"].size == (64, 48) and first["conversations"][0]["from"] == "human"
    assert sum(r is None for r in ds["image"]) == 4


def test_rerun_resumes_and_redone_shard_is_identical(built):
    before = _shard_bytes(built)
    assert _build(built) == 0  # all complete: nothing rewritten
    assert _shard_bytes(built) == before
    (built / "completions" / "shard-00002").unlink()
    (built / "shard-00002.parquet").unlink()
    assert _build(built) == 0
    assert _shard_bytes(built) == before


def test_plan_alone_fetches_nothing_and_the_build_reuses_it(tmp_path, capsys):
    out = tmp_path / "planned"
    assert _build(out, "--plan", "--set", "rows_per_shard=100") == 0
    assert "total 22 rows" in capsys.readouterr().err
    plan = json.loads((out / "plan" / "plan.json").read_text())
    assert len(plan["shards"]) == 5 and not shards.list_shards(out)  # one shard per config, nothing fetched
    assert _build(out, "--total", "3") == 2  # a different request is refused, not mixed in


def test_different_request_on_same_output_is_refused(built, capsys):
    assert _build(built, "--total", "11") == 2
    assert "different request" in capsys.readouterr().err


def test_total_rescales_and_plain_loop_gives_identical_shards(ray_session, tmp_path):
    """Same seed -> same bytes whether Ray's workers or one process write the shards."""
    from types import SimpleNamespace

    from sgt_data import runner
    from sgt_data.sources import llava_ov_cache as cache
    from sgt_data.sources.llava_ov import ShardReader
    from sgt_data.sources.llava_ov_io import LocalSource
    from sgt_data.sources.llava_ov_rows import CheckVqa

    ray_out = tmp_path / "ray"
    assert _build(ray_out, "--total", "11") == 0
    manifest = json.loads((ray_out / "manifest.json").read_text())
    assert manifest["rows"] == 11
    args = SimpleNamespace(
        overrides=[],
        seed=None,
        exact=False,
        fetch_budget=None,
        repo_id=None,
        revision=None,
        fix_missing=False,
        exclude=[],
        total=11,
        allow_short=False,
        source=str(SAMPLE),
    )
    spec, request = cache.load_request(REPO / "pipelines" / "llava_ov_sample.yaml", args)
    loop_out = tmp_path / "loop"
    plan = cache.load_or_make_plan(loop_out, LocalSource(SAMPLE), spec, request)
    for task in reversed(cache.shard_tasks(plan, loop_out)):  # another order, one process
        runner.process_shard(
            task, ShardReader(LocalSource(SAMPLE)), [CheckVqa()], shards.VQA_COLUMNS, str(loop_out)
        )
    assert _shard_bytes(loop_out) == _shard_bytes(ray_out)

"""`sgt-data build proxies` end to end through Ray: outputs, bad input rows, determinism, crash-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sgt_data import shards
from sgt_data.cli import main

pytestmark = pytest.mark.integration


def build(input_dir: Path, out: Path, *extra: str) -> int:
    return main(
        ["build", "proxies", "--input", str(input_dir), "--output", str(out), "--no-progress", *extra]
    )


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in shards.list_shards(folder)}


def test_sample_builds_seg_and_edge(ray_session, sa1b_sample, tmp_path):
    n_inputs = len(list(sa1b_sample.glob("sa_*.jpg")))
    out = tmp_path / "out"
    assert build(sa1b_sample, out, "--level", "seg,edge", "--set", "shard_rows=3") == 0
    manifest = shards.read_manifest(out)
    assert manifest["inputs_total"] == n_inputs == manifest["rows"]
    assert manifest["counts"] == {"ok": n_inputs}
    assert manifest["levels"] == ["seg", "edge"] and manifest["command"][:3] == [
        "sgt-data",
        "build",
        "proxies",
    ]
    assert len(shards.list_shards(out)) == -(-n_inputs // 3)
    assert sorted(p.name for p in (out / "completions").iterdir()) == [
        f"shard-{i:05d}" for i in range(len(shards.list_shards(out)))
    ]
    import cv2

    for row in shards.iter_rows(out):
        image = cv2.imdecode(np.frombuffer(row["image"]["bytes"], np.uint8), cv2.IMREAD_COLOR)
        seg = cv2.imdecode(np.frombuffer(row["seg"]["bytes"], np.uint8), cv2.IMREAD_UNCHANGED)
        edge = cv2.imdecode(np.frombuffer(row["edge"]["bytes"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert seg.shape == image.shape and edge.shape == image.shape[:2]
        assert (row["width"], row["height"]) == (image.shape[1], image.shape[0])
        assert len(np.unique(seg.reshape(-1, 3), axis=0)) > 5, "a real instance map has many colours"
        assert set(np.unique(edge)) <= {0, 255} and edge.any()
        assert row["prompt_seg"] and row["prompt_edge"]
    # same input, in-process instead of 2 Ray workers -> identical shards (palettes and prompts are keyed)
    again = tmp_path / "again"
    assert (
        build(sa1b_sample, again, "--level", "seg,edge", "--set", "shard_rows=3", "--executor", "local") == 0
    )
    assert shard_bytes(out) == shard_bytes(again)


def _corrupt_inputs(sample: Path, dest: Path) -> dict[str, str]:
    """Copy the sample and add one broken sample per error class; returns key -> expected status."""
    shutil.copytree(sample, dest)
    first = sorted(dest.glob("sa_*.jpg"))[0]
    doc = json.loads(first.with_suffix(".json").read_text())
    jpeg = first.read_bytes()
    expected = {}

    def add(key: str, status: str, image: bytes | None = jpeg, ann: dict | str | None = doc):
        if image is not None:
            (dest / f"{key}.jpg").write_bytes(image)
        if ann is not None:
            (dest / f"{key}.json").write_text(ann if isinstance(ann, str) else json.dumps(ann))
        expected[key] = status

    add("sa_900001", "bad_image", image=b"\xff\xd8\xff\xe0 definitely not a jpeg")
    add("sa_900002", "bad_image", image=jpeg[: len(jpeg) // 2])
    add("sa_900003", "missing_partner", ann=None)
    add("sa_900004", "missing_partner", image=None)
    add("sa_900005", "bad_annotations", ann="{not json")
    wrong_size = json.loads(json.dumps(doc))
    wrong_size["annotations"][0]["segmentation"]["size"] = [7, 9]
    add("sa_900006", "bad_rle", ann=wrong_size)
    bad_counts = json.loads(json.dumps(doc))
    bad_counts["annotations"][0]["segmentation"]["counts"] = "\x01\x02 not rle"
    add("sa_900007", "bad_rle", ann=bad_counts)
    empty = json.loads(json.dumps(doc))
    empty["annotations"] = []
    add("sa_900008", "ok", ann=empty)
    return expected


def test_bad_inputs_become_rows_and_the_run_goes_on(ray_session, sa1b_sample, tmp_path):
    inputs = tmp_path / "in"
    expected = _corrupt_inputs(sa1b_sample, inputs)
    n_good = len(list(sa1b_sample.glob("sa_*.jpg")))
    out = tmp_path / "out"
    assert build(inputs, out, "--level", "seg,edge", "--set", "shard_rows=4") == 0
    rows = {r["key"]: r for r in shards.iter_rows(out)}
    assert len(rows) == n_good + len(expected) == shards.read_manifest(out)["inputs_total"]
    for key, status in expected.items():
        assert rows[key]["status"] == status, (key, rows[key]["error"])
        if status != "ok":
            assert key in rows[key]["error"] or "annotation" in rows[key]["error"], rows[key]["error"]
    import cv2

    blank = cv2.imdecode(np.frombuffer(rows["sa_900008"]["seg"]["bytes"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert not blank.any(), "empty annotations give an all-black seg map"


def test_pixel_limit_guards_against_decompression_bombs(ray_session, sa1b_sample, tmp_path):
    out = tmp_path / "out"
    assert build(sa1b_sample, out, "--level", "seg", "--set", "max_pixels=1000") == 0
    statuses = {r["status"] for r in shards.iter_rows(out)}
    assert statuses == {"bad_image"}


def _wait_for(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigkill_then_rerun_writes_only_missing_shards(ray_session, sa1b_sample, tmp_path):
    clean = tmp_path / "clean"
    assert build(sa1b_sample, clean, "--level", "seg,edge", "--set", "shard_rows=1") == 0
    out = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "sgt_data.cli", "build", "proxies", "--input", str(sa1b_sample), "--output",
           str(out), "--level", "seg,edge", "--set", "shard_rows=1", "--num-cpus", "1", "--executor", "ray",
           "--no-progress"]  # fmt: skip
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        done = _wait_for(lambda: (out / "completions").exists() and any((out / "completions").iterdir()), 120)
        assert done, "no shard completed within 120 s: " + (
            proc.stderr.read().decode() if proc.poll() else ""
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    survived = {p.name: p.stat().st_mtime_ns for p in (out / "completions").iterdir()}
    total = len(shards.list_shards(clean))
    assert 1 <= len(survived) < total, "the kill must land mid-build"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.list_shards(out)}
    assert build(sa1b_sample, out, "--level", "seg,edge", "--set", "shard_rows=1") == 0
    for marker, mtime in survived.items():
        shard = out / f"{marker}.parquet"
        assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == before[shard.name], (
            f"{shard.name} was rewritten"
        )
        assert (out / "completions" / marker).stat().st_mtime_ns == mtime
    assert shard_bytes(out) == shard_bytes(clean)
    assert not list(out.glob(".*tmp*")), "a killed run's temporary files are cleaned up by the rerun"


def test_overwrite_redoes_every_shard(ray_session, sa1b_sample, tmp_path):
    out = tmp_path / "out"
    assert build(sa1b_sample, out, "--level", "edge", "--set", "shard_rows=4") == 0
    first = {p.name: p.stat().st_mtime_ns for p in shards.list_shards(out)}
    assert build(sa1b_sample, out, "--level", "edge", "--set", "shard_rows=4") == 0
    assert {p.name: p.stat().st_mtime_ns for p in shards.list_shards(out)} == first
    time.sleep(0.01)
    assert build(sa1b_sample, out, "--level", "edge", "--set", "shard_rows=4", "--overwrite") == 0
    assert all(p.stat().st_mtime_ns != first[p.name] for p in shards.list_shards(out))


def test_canonical_shards_are_an_input_and_sam_masks_are_used(ray_session, sa1b_sample, tmp_path):
    """Shards as `build sam` writes them: a ready-made colour mask wins over RLE, resized with NEAREST."""
    import cv2

    keys = sorted(p.stem for p in sa1b_sample.glob("sa_*.jpg"))[:2]
    rows = {c: [] for c in shards.INGEST_COLUMNS}
    mask = np.zeros((10, 20, 3), np.uint8)
    mask[:, 10:] = (0, 0, 255)
    mask_png = cv2.imencode(".png", mask)[1].tobytes()
    for key in keys:
        for col, value in zip(
            shards.INGEST_COLUMNS,
            [
                key,
                "sam-sgt",
                key,
                (sa1b_sample / f"{key}.jpg").read_bytes(),
                None,
                None,
                None,
                mask_png,
                "ok",
                None,
            ],
        ):
            rows[col].append(value)
    ingest = tmp_path / "ingest"
    shards.finish_shard(ingest, 3, shards.to_table(rows, shards.INGEST_COLUMNS))
    shards.write_manifest(ingest, kind="ingest")
    out = tmp_path / "out"
    assert build(ingest, out, "--level", "seg") == 0
    assert [p.name for p in shards.list_shards(out)] == ["shard-00003.parquet"]
    for row in shards.iter_rows(out):
        seg = cv2.imdecode(np.frombuffer(row["seg"]["bytes"], np.uint8), cv2.IMREAD_COLOR)
        assert seg.shape[:2] == (row["height"], row["width"])
        assert len(np.unique(seg.reshape(-1, 3), axis=0)) == 2, "NEAREST keeps exactly the mask's colours"


def test_a_changed_plan_is_refused_then_rebuilt_whole_with_overwrite(
    ray_session, sa1b_sample, tmp_path, capsys
):
    n_inputs = len(list(sa1b_sample.glob("sa_*.jpg")))
    out = tmp_path / "out"
    assert build(sa1b_sample, out, "--level", "seg", "--set", "shard_rows=2", "--executor", "local") == 0
    for change in (["--set", "shard_rows=4"], ["--set", "shard_rows=2", "--set", "seed=1"]):
        capsys.readouterr()
        assert build(sa1b_sample, out, "--level", "seg", *change, "--executor", "local") == 2
        assert "--overwrite" in capsys.readouterr().err
    assert build(sa1b_sample, out, "--level", "seg", "--set", "shard_rows=4", "--overwrite") == 0
    assert len(shards.list_shards(out)) == -(-n_inputs // 4), "stale shards of the old sharding are removed"
    assert (
        len(list((out / "completions").iterdir()))
        == len(list((out / "stats").iterdir()))
        == -(-n_inputs // 4)
    )
    keys = [r["key"] for r in shards.iter_rows(out, ["key"])]
    assert len(keys) == len(set(keys)) == n_inputs

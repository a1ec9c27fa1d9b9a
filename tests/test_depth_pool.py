"""Depth through Ray: the actor pool (split step, prefetch), the runner end to end, and `build proxies --level depth`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sgt_data import actor_pool, runner, shards
from sgt_data.proxies import depth as D

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return D.save_random_model(tmp_path_factory.mktemp("da") / "tiny", arch="tiny")


def jpegs(sizes: list[tuple[int, int]]) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for h, w in sizes:
        img = cv2.resize(
            rng.integers(0, 256, (5, 5, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC
        )
        out.append(cv2.imencode(".jpg", img)[1].tobytes())
    return out


def chunk(images: list[bytes], start: int) -> dict:
    n = len(images)
    return {
        "key": [f"k{start + i}" for i in range(n)],
        "image": images,
        "status": ["ok"] * n,
        "error": [None] * n,
    }


def depth_map(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.int64)


def test_pool_gives_what_the_step_gives_in_process(ray_session, tiny_model):
    step = D.DepthTarget(str(tiny_model), batch_size=4, num_gpus=0)
    images = jpegs([(90, 120), (120, 90), (90, 120), (60, 60), (90, 120)])
    images[3] = b"\xff\xd8 broken"
    chunks = [chunk(images[:3], 0), chunk([], 3), chunk(images[3:], 3)]
    pools = actor_pool.make_pools([step])
    try:
        assert len(pools[0]) == 1 and step.prep is not None, "settings computed once on the driver"
        outs = list(actor_pool.process_chunks(iter(chunks), [step], pools, salt=7, prefetch=2))
    finally:
        for actor in pools[0]:
            ray_session.kill(actor)
    local = D.DepthTarget(str(tiny_model), batch_size=4, num_gpus=0)
    expected = [local(dict(c)) for c in chunks if c["key"]]
    assert [o["key"] for o in outs] == [e["key"] for e in expected], "input order kept, empty chunk skipped"
    for out, exp in zip(outs, expected):
        assert out["status"] == exp["status"]
        for got, want in zip(out["depth"], exp["depth"]):
            assert (got is None) == (want is None)
            if got is not None:
                assert np.abs(depth_map(got) - depth_map(want)).max() <= 2
    assert outs[1]["status"] == ["bad_image", "ok"]


def test_runner_writes_depth_shards(ray_session, tiny_model, tmp_path):
    images = jpegs([(80, 100), (100, 80), (64, 64)]) + [b""]
    sizes = [(100, 80), (80, 100), (64, 64)]

    rows = {**chunk(images, 0), "source": ["test"] * len(images)}

    def reader(task):  # uses nothing from this module: Ray workers cannot import test files
        yield {k: v[:2] for k, v in task.inputs.items()}
        yield {k: v[2:] for k, v in task.inputs.items()}

    step = D.DepthTarget(str(tiny_model), batch_size=2, num_gpus=0)
    columns = shards.sample_columns(["depth"])
    opts = runner.RunOptions(progress=False, executor="ray")
    result = runner.run([runner.ShardTask(0, rows, rows_hint=4)], reader, [step], columns, tmp_path, opts)
    assert result.written == [0] and result.rows == 4
    rows = list(shards.iter_rows(tmp_path))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "bad_image"]
    for row, (w, h) in zip(rows, sizes):
        q = cv2.imdecode(np.frombuffer(row["depth"]["bytes"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert q.dtype == np.uint16 and q.shape == (h, w)
        assert row["depth_min"] < row["depth_max"]
    assert rows[3]["depth"] is None and "empty" in rows[3]["error"]


def test_build_proxies_level_depth(ray_session, sa1b_sample, tiny_model, tmp_path):
    from sgt_data.cli import main

    out = tmp_path / "out"
    argv = ["build", "proxies", "--input", str(sa1b_sample), "--output", str(out), "--no-progress"]
    assert main([*argv, "--level", "depth", "--depth-model", str(tiny_model)]) == 0
    rows = list(shards.iter_rows(out))
    assert rows and all(r["status"] == "ok" for r in rows)
    for row in rows:
        image = cv2.imdecode(np.frombuffer(row["image"]["bytes"], np.uint8), cv2.IMREAD_COLOR)
        q = cv2.imdecode(np.frombuffer(row["depth"]["bytes"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert q.dtype == np.uint16 and q.shape == image.shape[:2]
        assert row["prompt_depth"] and row["depth_min"] < row["depth_max"]
    assert shards.read_manifest(out)["levels"] == ["depth"]


def test_build_proxies_without_the_model(sa1b_sample, tmp_path, capsys):
    from sgt_data.cli import main

    argv = ["build", "proxies", "--input", str(sa1b_sample), "--no-progress", "--executor", "local"]
    missing = str(tmp_path / "no-model")
    with pytest.raises(SystemExit, match="no such folder"):
        main([*argv, "--output", str(tmp_path / "a"), "--level", "depth", "--depth-model", missing])
    # depth not asked for: it is skipped with the message, seg and edge are built
    assert main([*argv, "--output", str(tmp_path / "b"), "--set", f"levels.depth.model={missing}"]) == 0
    assert "depth is skipped" in capsys.readouterr().err
    assert shards.read_manifest(tmp_path / "b")["levels"] == ["seg", "edge"]

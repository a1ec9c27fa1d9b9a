"""The training loop on CPU with the toy adapter over real shard files: resume exactness, normalisation, safety."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.built import write_fixture_shards, write_recipe

from sgt_data.config import ConfigError
from sgt_data.train.checkpoint import list_checkpoints
from sgt_data.train.metrics import read_metrics
from sgt_data.train.recipe import load_recipe


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return write_fixture_shards(tmp_path_factory.mktemp("shards"))


def _run(recipe_path: Path, *overrides: str) -> Path:
    from sgt_data.train.loop import train

    return train(load_recipe(recipe_path, list(overrides)))


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_resume_is_exact(tmp_path, shard_dirs):
    proxy, vqa = shard_dirs
    straight = write_recipe(tmp_path / "a.yaml", proxy, vqa, tmp_path / "a", train={"ema_decay": 0.9})
    split = write_recipe(tmp_path / "b.yaml", proxy, vqa, tmp_path / "b", train={"ema_decay": 0.9})
    _run(straight, "data.num_workers=2")
    _run(split, "train.max_steps=2", "train.save_final=false")
    _run(split)  # resume=auto picks up step 2 and runs steps 3-4 with the original max_steps
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "loss/ce", "loss/mse", "lr", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert a[0]["samples/seg"] == 4 and a[0]["samples/vqa"] == 2
    for name in ("final", "final-ema"):
        wa, wb = _weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name)
        assert all(np.array_equal(wa[k], wb[k]) for k in wa), name
    assert any(not np.array_equal(wa[k], _weights(tmp_path / "a" / "final")[k]) for k in wa), "EMA differs"


def test_loss_is_independent_of_micro_batching(tmp_path, shard_dirs):
    """Token means over the global step: one micro-batch of 6 or six of 1 give the same loss and update."""
    proxy, vqa = shard_dirs
    outs = []
    for mb in (1, 6):
        recipe = write_recipe(
            tmp_path / f"r{mb}.yaml", proxy, vqa, tmp_path / f"o{mb}", train={"max_steps": 2}
        )
        outs.append(_run(recipe, f"model.options.micro_batch_size={mb}"))
    m1, m6 = read_metrics(outs[0]), read_metrics(outs[1])
    assert [r["micro_batches"] for r in m1] == [6, 6] and [r["micro_batches"] for r in m6] == [1, 1]
    for key in ("loss/ce", "loss/mse", "grad_norm"):
        assert np.allclose([r[key] for r in m1], [r[key] for r in m6], rtol=1e-5), key
    w1, w6 = _weights(outs[0] / "final"), _weights(outs[1] / "final")
    # AdamW divides by sqrt(v): float-rounding-level gradient differences move a weight by ~1e-6.
    assert all(np.allclose(w1[k], w6[k], atol=2e-5) for k in w1)


def test_checkpoints_rotate_and_stop_at_max_steps(tmp_path, shard_dirs):
    proxy, vqa = shard_dirs
    recipe = write_recipe(
        tmp_path / "r.yaml",
        proxy,
        vqa,
        tmp_path / "o",
        train={"max_steps": 5, "save_every": 2, "keep_last": 2},
    )
    out = _run(recipe)
    assert [s for s, _ in list_checkpoints(out)] == [4, 5]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert read_metrics(out)[-1]["step"] == 5
    _run(recipe)  # already at max_steps: nothing more is trained
    assert read_metrics(out)[-1]["step"] == 5


def test_refuses_missing_checkpoint_and_mixed_runs(tmp_path, shard_dirs):
    proxy, vqa = shard_dirs
    recipe = write_recipe(
        tmp_path / "r.yaml",
        proxy,
        vqa,
        tmp_path / "o",
        model={"init": "pretrained", "path": str(tmp_path / "nope")},
    )
    with pytest.raises(ConfigError, match="does not exist; refusing to train"):
        _run(recipe)
    assert not (tmp_path / "o").exists(), "nothing may be written before the checks pass"
    from sgt_data.train.toy import write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path / "ckpt")
    out = _run(recipe, f"model.path={tmp_path / 'ckpt'}", "train.max_steps=1")
    with pytest.raises(FileExistsError, match="resume=never"):
        _run(recipe, f"model.path={tmp_path / 'ckpt'}", "train.resume=never")
    assert read_metrics(out)[-1]["step"] == 1


def test_shard_index_keeps_ok_rows_and_reads_only_needed_columns(shard_dirs):
    from sgt_data.train.data import RowReader, ShardIndex, task_columns

    proxy, vqa = shard_dirs
    index = ShardIndex.build([proxy])
    assert len(index) == 12  # 14 rows, rows 3 and 10 carry an error status
    reader = RowReader(cache_size=2)
    keys = [reader.read(*index.locate(i), task_columns("seg"))["key"] for i in range(len(index))]
    assert "sa_3" not in keys and "sa_10" not in keys and len(set(keys)) == 12
    row = reader.read(*index.locate(0), task_columns("edge"))
    assert set(row) == {"key", "source", "image", "width", "height", "edge", "prompt_edge"}
    assert row["edge"]["bytes"][:4] == b"\x89PNG"
    vqa_row = reader.read(*ShardIndex.build([vqa]).locate(0), task_columns("vqa"))
    assert vqa_row["conversations"][1]["from"] == "gpt"

"""recipes/omnigen2_tiny.yaml through the real training loop on CPU over real shard files, then the export loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_tiny_recipe_trains_and_exports(tmp_path):
    from support.built import write_fixture_shards

    from sgt_data.models.base import ModelConfig, get_adapter
    from sgt_data.train.loop import train
    from sgt_data.train.metrics import read_metrics
    from sgt_data.train.recipe import load_recipe

    proxy, vqa = write_fixture_shards(tmp_path / "shards", n_proxy=8, n_vqa=4)
    out = tmp_path / "run"
    recipe = load_recipe(
        REPO / "recipes" / "omnigen2_tiny.yaml",
        [
            f"data.proxies=[{proxy}]",
            f"data.vqa=[{vqa}]",
            f"train.output_dir={out}",
            "train.max_steps=2",
            "train.save_every=0",
            "train.progress=false",
        ],  # fmt: skip
    )
    assert recipe.validate() == []
    train(recipe)
    metrics = read_metrics(out)
    assert len(metrics) >= 2
    for row in metrics:
        for key in ("fm", "ce"):
            assert key in str(row), row
    final = out / "final"
    assert (final / "model_index.json").is_file() and (final / "transformer" / "config.json").is_file()
    adapter = get_adapter("omnigen2")
    model = adapter.build(ModelConfig(name="omnigen2", path=str(final), dtype="float32"), for_training=False)
    assert any(p.abs().sum() > 0 for p in model.transformer.parameters())
    image = adapter.t2i(model, "a cat", width=32, height=32, steps=2, seed=0)
    assert image.size == (32, 32)
    assert np.asarray(image).std() > 0


@pytest.mark.integration
def test_cli_infer_all_tasks_on_a_tiny_checkpoint(tmp_path, capsys):
    from PIL import Image

    from sgt_data.cli import main
    from sgt_data.models.omnigen2 import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "tiny")
    image = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)).save(image)
    base = ["--model", "omnigen2", "--path", str(ckpt), "--device", "cpu", "--steps", "2"]
    assert (
        main(
            ["infer", "und", *base, "--image", str(image), "--prompt", "What is it?", "--max-new-tokens", "3"]
        )
        == 0
    )
    assert main(["infer", "t2i", *base, "--prompt", "a cat", "--width", "48", "--height", "32",
                 "--out", str(tmp_path / "t2i.png"), "--opt", "text_guidance_scale=3.0"]) == 0  # fmt: skip
    assert Image.open(tmp_path / "t2i.png").size == (48, 32)
    assert main(["infer", "seg", *base, "--image", str(image), "--out", str(tmp_path / "seg.png")]) == 0
    assert Image.open(tmp_path / "seg.png").size == (90, 60)

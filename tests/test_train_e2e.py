"""End to end: shards built by our own commands from bundled/tiny inputs -> `sgt-data train` with each port.

Proxies come from `sgt-data build proxies --input examples/sa1b`; VQA shards from `sgt-data build llava-ov
--source examples/llava_ov --pipeline llava_ov_sample` (the bundled LLaVA-OneVision-shaped sample). Training runs the ports' `recipes/<model>_tiny.yaml` when present, else an equivalent recipe written here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from sgt_data import specs
from sgt_data.cli import main
from sgt_data.train.metrics import read_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory, sa1b_sample) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("built")
    common = ["--executor", "local", "--no-progress"]
    proxies, vqa = root / "proxies", root / "vqa"
    assert (
        main(
            [
                "build",
                "proxies",
                "--input",
                str(sa1b_sample),
                "--output",
                str(proxies),
                "--level",
                "seg,edge",
                *common,
            ]
        )
        == 0
    )
    llava_sample = sa1b_sample.parent / "llava_ov"
    argv = [
        "build",
        "llava-ov",
        "--source",
        str(llava_sample),
        "--pipeline",
        "llava_ov_sample",
        "--output",
        str(vqa),
    ]
    assert main([*argv, *common]) == 0
    return proxies, vqa


def tiny_recipe(model: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """The port's bundled tiny recipe (plus a tiny checkpoint if it wants one), or an equivalent one."""
    if f"{model}_tiny" in specs.available("recipes"):
        path = specs.resolve("recipes", f"{model}_tiny")
        data = yaml.safe_load(path.read_text())
        extra = []
        if data.get("model", {}).get("init", "pretrained") == "pretrained":
            import importlib

            ckpt = importlib.import_module(f"sgt_data.models.{model}").write_tiny_checkpoint(
                tmp_path / "ckpt"
            )
            extra.append(f"model.path={ckpt}")
        return path, extra
    weights = {"bagel": {"ce": 1.5, "mse": 1.0}, "omnigen2": {"ce": 1.0, "fm": 1.0}}[model]
    data = {
        "model": {"name": model, "init": "random", "config": "tiny"},
        "data": {"num_workers": 2},
        "mixing": {"ratio": {"seg": 2, "vqa": 1}, "samples_per_step": 3},
        "loss_weights": weights,
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"mixed_precision": "fp32", "progress": False},
    }
    path = tmp_path / f"{model}_tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, []


@pytest.mark.parametrize("model", ["bagel", "omnigen2"])
def test_train_cli_end_to_end(model, built, tmp_path):
    proxies, vqa = built
    recipe, extra = tiny_recipe(model, tmp_path)
    out = tmp_path / "run"
    args = [
        f"data.proxies=[{proxies}]",
        f"data.vqa=[{vqa}]",
        f"train.output_dir={out}",
        "train.max_steps=2",
        *extra,
    ]
    # The console script's entry point, in-process (a subprocess would pay the torch import again).
    assert main(["train", str(recipe), *args, "--log-level", "WARNING"]) == 0
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert (out / "checkpoints" / "step-0000002").is_dir()
    # The export is in the port's official layout: the port builds it back as a pretrained checkpoint.
    from sgt_data.models.base import ModelConfig, get_adapter

    get_adapter(model).build(ModelConfig(name=model, path=str(out / "final")), for_training=False)


@pytest.mark.parametrize("model", ["bagel", "omnigen2"])
def test_port_resume_is_exact(model, built, tmp_path):
    """Two steps straight == one step, restart, one more step: for the real ports, not only the toy."""
    from sgt_data.train.loop import train
    from sgt_data.train.recipe import load_recipe

    proxies, vqa = built
    recipe, extra = tiny_recipe(model, tmp_path)
    base = [f"data.proxies=[{proxies}]", f"data.vqa=[{vqa}]", "train.save_final=false", "data.num_workers=0"]
    # The first leg stops at max_steps=1: a constant schedule keeps the lr of step 2 independent of that.
    base += ["train.mixed_precision=fp32", "train.progress=false", "optim.schedule=constant", *extra]
    train(load_recipe(recipe, [*base, f"train.output_dir={tmp_path / 'a'}", "train.max_steps=2"]))
    train(load_recipe(recipe, [*base, f"train.output_dir={tmp_path / 'b'}", "train.max_steps=1"]))
    train(load_recipe(recipe, [*base, f"train.output_dir={tmp_path / 'b'}", "train.max_steps=2"]))
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2]
    for key in [k for k in a[0] if k.startswith("loss")] + ["grad_norm"]:
        assert [r[key] for r in a] == [r[key] for r in b], key

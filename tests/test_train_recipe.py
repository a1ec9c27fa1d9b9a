"""Recipe schema, validation messages, `--help` field docs, and `train ls | cp | validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sgt_data import specs
from sgt_data.cli import main
from sgt_data.config import ConfigError
from sgt_data.train.recipe import Recipe, describe, load_recipe, preflight


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _minimal(tmp_path: Path) -> dict:
    return {
        "model": {"name": "toy", "init": "random"},
        "data": {"proxies": [str(tmp_path)], "vqa": [str(tmp_path)]},
        "mixing": {"ratio": {"seg": 2, "vqa": 1}, "samples_per_step": 6},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 2},
    }


def test_every_bad_key_is_listed_at_once(tmp_path):
    data = _minimal(tmp_path)
    data["optim"] = {"lr": "fast", "betaz": [0.9, 0.95]}
    data["train"]["max_step"] = 3
    data["mixing"]["ratio"] = {"seg": "two"}
    data["colour"] = "blue"
    with pytest.raises(ConfigError) as err:
        load_recipe(_write(tmp_path / "r.yaml", data))
    text = str(err.value)
    for needle in (
        "optim.lr: expected float",
        "optim.betaz: unknown key",
        "train.max_step: unknown key",
        "did you mean max_steps",
        "mixing.ratio.seg: expected int",
        "colour: unknown key",
    ):
        assert needle in text, needle
    assert len(err.value.problems) == 5


def test_cross_field_rules_are_listed_together(tmp_path):
    data = _minimal(tmp_path)
    data["model"] = {"name": "bagel", "init": "pretrained"}
    data["mixing"] = {"ratio": {"seg": 2, "vqa": 1, "sketch": 1}, "samples_per_step": 7}
    data["data"] = {"vqa": []}
    data["optim"] = {"betas": [0.9], "min_lr_ratio": 2}
    with pytest.raises(ConfigError) as err:
        load_recipe(_write(tmp_path / "r.yaml", data))
    text = str(err.value)
    for needle in (
        "unknown task(s) sketch",
        "not a positive multiple of sum(ratio) = 4",
        "(try 8)",
        "data.proxies: empty",
        "data.vqa: empty",
        "optim.betas",
        "optim.min_lr_ratio",
        "model.path: required with init: pretrained",
    ):
        assert needle in text, needle


def test_overrides_and_exact_counts(tmp_path):
    path = _write(tmp_path / "r.yaml", _minimal(tmp_path))
    recipe = load_recipe(
        path, ["mixing.samples_per_step=60", "optim.lr=2e-5", "loss_weights={ce: 1.5, fm: 1.0}"]
    )
    assert recipe.task_counts() == {"seg": 40, "vqa": 20}
    assert recipe.optim.lr == 2e-5 and recipe.loss_weights == {"ce": 1.5, "fm": 1.0}
    assert load_recipe(path, ["mixing.ratio={edge: 1, vqa: 1}"]).task_counts() == {"edge": 3, "vqa": 3}


def test_preflight_refuses_missing_paths(tmp_path):
    data = _minimal(tmp_path)
    data["model"] = {"name": "bagel", "init": "pretrained", "path": str(tmp_path / "BAGEL-7B-MoT")}
    data["train"]["resume"] = str(tmp_path / "nowhere")
    problems = preflight(load_recipe(_write(tmp_path / "r.yaml", data)))
    text = "\n".join(problems)
    assert "BAGEL-7B-MoT does not exist; refusing to train" in text
    assert "holds no shard-*.parquet" in text and "checkpoint folder" in text


def test_preflight_refuses_a_task_the_proxy_folder_lacks(tmp_path):
    from support.built import write_fixture_shards

    proxy, vqa = write_fixture_shards(tmp_path / "shards")  # seg + edge, no depth
    data = _minimal(tmp_path)
    data["data"] = {"proxies": [str(proxy)], "vqa": [str(vqa)]}
    data["mixing"] = {"ratio": {"depth": 2, "vqa": 1}, "samples_per_step": 3}
    problems = preflight(load_recipe(_write(tmp_path / "r.yaml", data)))
    assert any("has no depth targets" in p and "--level depth" in p for p in problems), problems
    data["mixing"]["ratio"] = {"edge": 2, "vqa": 1}
    assert preflight(load_recipe(_write(tmp_path / "r.yaml", data))) == []


def test_every_field_is_documented():
    rows = describe(Recipe)
    assert {
        "model.path",
        "mixing.ratio",
        "mixing.samples_per_step",
        "loss_weights",
        "train.ema_decay",
        "distributed.strategy",
        "optim.schedule",
    } <= {k for k, _, _ in rows}
    undocumented = [k for k, _, doc in rows if not doc]
    assert not undocumented, undocumented


def test_help_lists_fields(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "mixing.samples_per_step = 60" in out and "train.resume = 'auto'" in out


def test_validate_ls_cp(tmp_path, capsys):
    good = _write(tmp_path / "good.yaml", _minimal(tmp_path) | {"optim": {"lr": 1e-3}})
    assert main(["train", "validate", str(good), "--schema-only"]) == 0
    assert "per step {'seg': 4, 'vqa': 2}" in capsys.readouterr().out
    assert main(["train", "validate", str(good)]) == 1  # the data folders hold no shards
    assert "holds no shard-*.parquet" in capsys.readouterr().err
    assert main(["train", "validate", str(good), "optim.lr=-1", "train.max_steps=0", "--schema-only"]) == 1
    err = capsys.readouterr().err
    assert "optim.lr: must be > 0" in err and "train.max_steps: must be > 0" in err

    names = specs.available("recipes")
    if not names:
        pytest.skip("no bundled recipes in this checkout yet")
    assert main(["train", "ls"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in names)
    assert main(["train", "cp", names[0], str(tmp_path)]) == 0
    copied = tmp_path / f"{names[0]}.yaml"
    assert copied.read_text() == specs.resolve("recipes", names[0]).read_text()
    assert main(["train", "cp", names[0], str(tmp_path)]) == 1  # no silent overwrite


@pytest.mark.parametrize("name", specs.available("recipes"))
def test_bundled_recipes_are_valid_and_documented(name):
    path = specs.resolve("recipes", name)
    head = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert len(head) >= 4, f"{name}: needs a header (purpose, data, hardware, command)"
    assert "sgt-data train" in "\n".join(head), f"{name}: header lacks the exact command"
    load_recipe(path)  # schema + cross-field rules

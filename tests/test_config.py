"""Config schemas: YAML + overrides into dataclasses, every problem listed at once; spec resolution."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sgt_data import config, specs


@dataclass
class Inner:
    lr: float = 1e-4
    """learning rate"""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    schedule: str = "constant"


@dataclass
class Outer:
    name: str
    """required name"""
    steps: int = 10
    inner: Inner = field(default_factory=Inner)
    ratio: dict[str, int] = field(default_factory=lambda: {"seg": 2, "vqa": 1})
    path: str | None = None


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner:\n  lr: 2e-5\n")
    cfg = config.load(Outer, path, ["steps=20", "inner.lr=3e-4", "ratio.seg=3", "path=null"])
    assert cfg.steps == 20 and cfg.inner.lr == pytest.approx(3e-4) and cfg.ratio == {"seg": 3, "vqa": 1}
    assert cfg.path is None and cfg.inner.betas == [0.9, 0.95]
    assert config.to_dict(cfg)["inner"]["lr"] == pytest.approx(3e-4)


def test_every_problem_is_listed_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stepz: 3\nsteps: many\ninner:\n  lr: fast\n  nope: 1\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(Outer, path)
    problems = err.value.problems
    assert any(p.startswith("stepz: unknown key") and "steps" in p for p in problems)
    assert any(p.startswith("steps: expected int") for p in problems)
    assert any(p.startswith("inner.lr: expected float") for p in problems)
    assert any(p.startswith("inner.nope: unknown key") for p in problems)
    assert any(p.startswith("name: required") for p in problems)
    assert len(problems) == 5
    assert str(path) in str(err.value)


def test_override_needs_equals():
    with pytest.raises(config.ConfigError, match="key=value"):
        config.apply_overrides({}, ["steps"])


def test_field_docs_are_read_from_attribute_docstrings():
    assert config.field_docs(Outer)["name"] == "required name"
    assert config.field_docs(Inner)["lr"] == "learning rate"


def test_specs_resolve_bundled_names_and_paths(tmp_path):
    assert specs.resolve("pipelines", "proxies").name == "proxies.yaml"
    assert "proxies" in specs.available("pipelines")
    own = tmp_path / "mine.yaml"
    own.write_text("seed: 1\n")
    assert specs.resolve("pipelines", str(own)) == own
    with pytest.raises(FileNotFoundError, match="no pipeline 'nothing'"):
        specs.resolve("pipelines", "nothing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        specs.resolve("pipelines", str(tmp_path / "typo" / "proxies.yaml"))  # never the bundled proxies.yaml
    assert specs.resolve("pipelines", "pipelines/proxies.yaml").name == "proxies.yaml"  # as the docs write it

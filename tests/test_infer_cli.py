"""`sgt-data infer` end to end on tiny random checkpoints of both ports (real loading and sampling code)."""

from __future__ import annotations

import pytest
from PIL import Image

from sgt_data.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_image(tmp_path_factory, sa1b_sample):
    path = tmp_path_factory.mktemp("img") / "small.jpg"
    Image.open(sorted(sa1b_sample.glob("sa_*.jpg"))[0]).convert("RGB").resize((64, 48)).save(path)
    return path


@pytest.mark.parametrize("model", ["bagel", "omnigen2"])
def test_seg_und_t2i(model, small_image, tmp_path, capsys):
    common = ["--model", model, "--random", "--config", "tiny", "--device", "cpu", "--steps", "2"]
    out = tmp_path / "seg.png"
    assert main(["infer", "seg", *common, "--image", str(small_image), "--out", str(out)]) == 0
    assert Image.open(out).size == (64, 48), "seg maps come back at the input's size"
    assert main(["infer", "t2i", *common, "--prompt", "a red bicycle", "--width", "64", "--height", "64",
                 "--out", str(tmp_path / "t2i.png")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "t2i.png").mode == "RGB"
    capsys.readouterr()
    assert main(["infer", "und", *common, "--image", str(small_image), "--prompt", "What is this?",
                 "--max-new-tokens", "4", "--out", str(tmp_path / "answer.txt")]) == 0  # fmt: skip
    assert (tmp_path / "answer.txt").read_text().strip() == capsys.readouterr().out.strip()


def test_edit_needs_a_port_that_edits(small_image, capsys):
    argv = ["infer", "t2i", "--model", "bagel", "--random", "--config", "tiny", "--prompt", "x", "--image"]
    assert main([*argv, str(small_image)]) == 2
    assert "does not edit images" in capsys.readouterr().err


def test_missing_checkpoint_is_refused(capsys):
    assert main(["infer", "seg", "--model", "bagel", "--image", "x.jpg"]) == 2
    assert "--path" in capsys.readouterr().err

"""Target decoding shared by the ports: 16-bit depth PNGs keep their gradient (never clipped to white)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from sgt_data.models.base import ModelConfig, get_adapter
from sgt_data.models.targets import to_rgb8


def _depth_png(h: int = 48, w: int = 64) -> bytes:
    ramp = np.linspace(0, 65535, w, dtype=np.float64).round().astype(np.uint16)
    return cv2.imencode(".png", np.tile(ramp, (h, 1)))[1].tobytes()


def _jpeg(h: int = 48, w: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_16_bit_depth_is_rescaled_not_clipped():
    img = Image.open(io.BytesIO(_depth_png()))
    assert img.mode.startswith("I")
    rgb = np.asarray(to_rgb8(img))
    assert rgb.shape == (48, 64, 3) and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255
    assert len(np.unique(rgb)) > 60, "a 0..65535 ramp keeps its gradient in 8 bits"
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    colour = Image.fromarray(np.full((4, 4, 3), (10, 200, 30), np.uint8))
    assert np.asarray(to_rgb8(colour))[0, 0].tolist() == [10, 200, 30]


@pytest.mark.parametrize("model", ["bagel", "omnigen2"])
def test_ports_train_depth_on_the_gradient(model):
    import torch

    adapter = get_adapter(model)
    processor = adapter.processor(ModelConfig(name=model, init="random", config="tiny", dtype="float32"))
    row = {"key": "sa_1", "image": {"bytes": _jpeg(), "path": None}, "depth": {"bytes": _depth_png(), "path": None},
           "prompt_depth": "Estimate the depth of the scene.", "status": "ok"}  # fmt: skip
    sample = processor.prepare(row, "depth", 0)
    tensors = [
        v for v in _walk(sample) if isinstance(v, torch.Tensor) and v.dtype.is_floating_point and v.ndim == 3
    ]
    assert tensors, "the prepared sample holds the target image"
    # the target (last image tensor in [-1, 1]) must not be saturated white
    target = tensors[-1]
    assert float((target >= 0.999).float().mean()) < 0.5, "depth target came out (almost) all white"


def _walk(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk(v)
    else:
        yield value

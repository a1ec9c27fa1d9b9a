"""Depth proxy on CPU: a tiny random Depth-Anything saved with `save_pretrained`, loaded through the real path."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from sgt_data.proxies import depth as D


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return D.save_random_model(tmp_path_factory.mktemp("da") / "tiny", arch="tiny")


@pytest.fixture(scope="session")
def step(tiny_model):
    s = D.DepthTarget(str(tiny_model), batch_size=3, num_gpus=0)
    s.setup()
    return s


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A natural-ish BGR picture: upsampled random colours (no flat areas, no pure noise)."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def batch_of(images: list[bytes]) -> dict:
    n = len(images)
    return {"key": [f"k{i}" for i in range(n)], "image": images, "status": ["ok"] * n, "error": [None] * n}


def png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("hw", [(300, 450), (450, 300), (40, 30), (1500, 2250), (56, 56)])
def test_preprocessing_matches_the_image_processor(tiny_model, step, hw):
    from transformers import AutoImageProcessor

    img = smooth_image(*hw, seed=1)
    ref = AutoImageProcessor.from_pretrained(tiny_model)(images=img[:, :, ::-1].copy(), return_tensors="np")
    ref = ref["pixel_values"][0]
    ours = D.prepare_rgb(img, step.prep).astype(np.float32) * step.prep.scale
    ours = ((ours - np.array(step.prep.mean)) / np.array(step.prep.std)).transpose(2, 0, 1)
    assert ours.shape == ref.shape
    assert D.input_size(*hw, step.prep) == ref.shape[1:]
    assert np.abs(ours - ref).mean() < 0.03  # OpenCV area/cubic vs PIL bicubic: ~1/255 apart


def test_outputs_shape_dtype_range_and_convention(step):
    images = [smooth_image(120, 160, 2), smooth_image(200, 90, 3), smooth_image(120, 160, 4)]
    out = step(batch_of([jpeg(i) for i in images]))
    assert out["status"] == ["ok"] * 3
    for img, data, lo, hi in zip(images, out["depth"], out["depth_min"], out["depth_max"]):
        q = png(data)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and q.dtype == np.uint16 and q.shape == img.shape[:2]
        assert isinstance(lo, float) and isinstance(hi, float) and lo < hi
        assert q.min() < 2000 and q.max() > 63000, "per-image normalisation spans the 16-bit range"
        raw = D.decode_depth(data, lo, hi)
        assert lo - 1e-6 <= raw.min() and raw.max() <= hi + 1e-6


def test_agrees_with_the_transformers_pipeline(tiny_model, step):
    """Our fast path (OpenCV resize, batched forward, bilinear resize-back) vs `pipeline('depth-estimation')`."""
    from PIL import Image
    from transformers import pipeline

    img = smooth_image(210, 280, 5)
    ref = pipeline("depth-estimation", model=str(tiny_model), device="cpu")(Image.fromarray(img[:, :, ::-1]))
    ref = ref["predicted_depth"].squeeze().numpy()
    out = step(batch_of([jpeg(img)]))
    ours = D.decode_depth(out["depth"][0], out["depth_min"][0], out["depth_max"][0])
    assert ours.shape == ref.shape == img.shape[:2]
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.98
    assert abs(out["depth_max"][0] - float(ref.max())) < 0.1 * (float(ref.max()) - float(ref.min()))


def test_bgr_column_is_used_and_bad_rows_stay_rows(step):
    img = smooth_image(100, 140, 6)
    batch = batch_of([jpeg(img), b"not an image", jpeg(img), jpeg(img)])
    batch["status"][3], batch["error"][3] = "bad_rle", "earlier step failed"
    batch["_bgr"] = [img, None, None, None]
    out = step(batch)
    assert out["status"] == ["ok", "bad_image", "ok", "bad_rle"]
    assert "not a known image format" in out["error"][1] and out["error"][3] == "earlier step failed"
    assert out["depth"][1] is None and out["depth"][3] is None and out["depth_min"][3] is None
    # the decoded `_bgr` and the JPEG of the same picture give the same map up to JPEG noise
    assert np.abs(png(out["depth"][0]).astype(int) - png(out["depth"][2]).astype(int)).mean() < 1500


def test_max_side_caps_the_png_and_sizes(tiny_model):
    s = D.DepthTarget(str(tiny_model), num_gpus=0, max_side=64)
    out = s(batch_of([jpeg(smooth_image(120, 200, 7)), jpeg(smooth_image(30, 40, 8))]))
    assert png(out["depth"][0]).shape == (38, 64) and png(out["depth"][1]).shape == (30, 40)
    assert D.output_size(2250, 1500, None) == (2250, 1500) and D.output_size(2250, 1500, 1024) == (1024, 683)


def test_encoding_round_trip_and_constant_maps():
    norm = np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16)
    back = D.decode_depth(D.encode_depth(norm, (16, 12)), 2.0, 5.0)
    assert np.abs(back - (2.0 + 3.0 * norm)).max() <= 3.0 / 65535 + 1e-6
    assert png(D.encode_depth(np.zeros((7, 9), np.float32), (18, 14))).max() == 0
    assert png(D.encode_depth(norm, (32, 24))).shape == (24, 32)


def test_device_resize_matches_opencv_and_reduced_decode(step):
    img = smooth_image(120, 160, 9)
    rgb = D.prepare_rgb(img, step.prep)[None]
    (q0,), _, _ = step._forward(rgb, [(rgb.shape[2], rgb.shape[1])])
    (q1,), _, _ = step._forward(rgb, [(160, 120)])
    ref = cv2.resize(q0.astype(np.float32) / 65535, (160, 120), interpolation=cv2.INTER_LINEAR) * 65535
    assert q0.dtype == q1.dtype == np.uint16 and q1.shape == (120, 160)
    assert np.abs(q1 - ref).max() <= 1.5, "bilinear on the device = cv2 INTER_LINEAR, half-pixel grid"
    small, size = D.decode_for_model(jpeg(img), step.prep)
    assert size == (160, 120) and small.shape == (60, 80, 3), "2x the model grid: decoded at half scale"
    assert D.prepare_rgb(small, step.prep, full=(120, 160)).shape == rgb.shape[1:]


def test_step_pickles_without_its_model(step):
    blob = pickle.dumps(step)
    assert len(blob) < 5000, "the loaded network must not travel with the step"
    clone = pickle.loads(blob)
    assert clone._net is None and clone.prep == step.prep


def test_num_gpus_follows_the_hardware(tiny_model):
    s = D.DepthTarget(str(tiny_model), num_gpus=1)
    assert s.num_gpus == (1.0 if D._gpus_in_cluster() > 0 else 0.0)
    assert D.DepthTarget(str(tiny_model), num_gpus=0).num_gpus == 0.0
    with pytest.raises(ValueError, match="dtype"):
        D.DepthTarget(str(tiny_model), dtype="int8")


def test_check_model_local_folders(tiny_model, tmp_path):
    assert D.check_model(str(tiny_model)) is None
    msg = D.check_model(str(tmp_path / "nowhere"))
    assert "no such folder" in msg and "--depth-model" in msg
    (tmp_path / "empty").mkdir()
    msg = D.check_model(str(tmp_path / "empty"), explicit=False)
    assert msg.startswith("depth is skipped:") and "config.json" in msg and "safetensors" in msg


def test_check_model_unreachable_hub_id_names_the_fetch_command():
    endpoint = "http://127.0.0.1:9"  # discard port: connection refused at once
    model = "depth-anything/Depth-Anything-V2-Small-hf"
    if D._cached(model):
        pytest.skip(f"{model} is in this machine's Hub cache, so it counts as available")
    msg = D.check_model(model, endpoint=endpoint, explicit=True)
    assert msg is not None and msg.startswith("depth was requested but")
    cmd = f"HF_ENDPOINT={endpoint} HF_HUB_DISABLE_XET=1 hf download {model} --local-dir models/Depth-Anything-V2-Small-hf"
    assert cmd in msg and "--depth-model models/Depth-Anything-V2-Small-hf" in msg
    assert D.check_model(model, endpoint=endpoint, explicit=False).startswith("depth is skipped:")
    assert D.fetch_command(model) == f"hf download {model} --local-dir models/Depth-Anything-V2-Small-hf"

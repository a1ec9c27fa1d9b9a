"""Depth on CUDA (run on the accelerator machine): bf16 on the GPU agrees with fp32 on the CPU; the pool takes a GPU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sgt_data.proxies import depth as D

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the accelerator machine)"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("da")
    return {arch: D.save_random_model(root / arch, arch=arch) for arch in ("tiny", "small")}


def batch(sizes: list[tuple[int, int]]) -> dict:
    rng = np.random.default_rng(1)
    images = []
    for h, w in sizes:
        img = cv2.resize(
            rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC
        )
        images.append(cv2.imencode(".jpg", img)[1].tobytes())
    n = len(images)
    return {"key": [f"k{i}" for i in range(n)], "image": images, "status": ["ok"] * n, "error": [None] * n}


def maps(out: dict) -> list[np.ndarray]:
    return [D.decode_depth(p, lo, hi) for p, lo, hi in zip(out["depth"], out["depth_min"], out["depth_max"])]


@pytest.mark.parametrize("arch,dtype", [("tiny", "auto"), ("small", "auto"), ("small", "fp16")])
def test_cuda_half_precision_agrees_with_cpu_fp32(models, arch, dtype):
    gpu = D.DepthTarget(str(models[arch]), batch_size=3, num_gpus=1, dtype=dtype)
    gpu.setup()
    want = torch.bfloat16 if dtype == "auto" else torch.float16
    assert gpu._device.type == "cuda" and next(gpu._net.parameters()).dtype == want
    cpu = D.DepthTarget(str(models[arch]), batch_size=3, num_gpus=0)
    b = batch([(1500, 2250), (480, 640), (1500, 2250), (700, 500)])
    got, ref = gpu(dict(b)), cpu(dict(b))
    assert got["status"] == ["ok"] * 4
    for g, r in zip(maps(got), maps(ref)):
        assert g.shape == r.shape and np.isfinite(g).all()
        assert np.corrcoef(g.ravel(), r.ravel())[0, 1] > 0.97


def test_pool_actor_holds_the_gpu(ray_session, models):
    from sgt_data import actor_pool

    step = D.DepthTarget(str(models["small"]), batch_size=4, num_gpus=1)
    assert step.num_gpus == 1.0, "the Ray cluster on a CUDA machine offers a GPU"
    pools = actor_pool.make_pools([step])
    try:
        assert ray_session.available_resources().get("GPU", 0) == 0, "the actor reserved the GPU"
        chunks = [batch([(480, 640)] * 5), batch([(768, 1024)] * 3)]
        outs = list(actor_pool.process_chunks(iter(chunks), [step], pools))
    finally:
        for actor in pools[0]:
            ray_session.kill(actor)
    assert [o["status"] for o in outs] == [["ok"] * 5, ["ok"] * 3]
    assert all(m.shape == (768, 1024) for m in maps(outs[1]))

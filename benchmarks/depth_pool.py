"""depth_pool: images/s of the depth proxy, our Ray actor pool vs a plain per-image transformers pipeline loop.

Both sides start from encoded JPEG bytes and end with the same output, a 16-bit PNG of the relative inverse depth
at the image's size. Baseline: `transformers.pipeline("depth-estimation")` called once per image in a loop (PIL
decode + the pipeline's own preprocessing, forward at the default dtype, resize-back) plus the same PNG encode.
Ours: `DepthTarget` split over `sgt_data.actor_pool` (decode + resize to the model grid and PNG encode in shard
tasks on every CPU; batched bf16 forward, resize-back and 16-bit quantisation in a threaded GPU actor; chunks
prefetched), the path `build proxies` takes through the runner. Model: random-init Depth-Anything at the
V2-Small architecture (518 px input), built locally.
GPU utilisation is sampled with nvidia-smi every 100 ms during each phase.

    python benchmarks/depth_pool.py                       # GPU machine: 1024x768 JPEGs
    python benchmarks/depth_pool.py --size 2250x1500      # SA-1B-sized images
    python benchmarks/depth_pool.py --tiny                # CPU smoke test: tiny model, few small images
    benchmarks/device/depth_gpu.sh                        # what ran on the H100 (gpu tests + both sizes)
Ends with `RESULT depth_pool <ours / baseline>`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sgt_data import actor_pool  # noqa: E402
from sgt_data.proxies import depth as D  # noqa: E402


def synthetic_jpegs(n: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """`n` distinct photo-like JPEGs (smooth colour fields + texture), quality 90."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = cv2.resize(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8), (width, height), cv2.INTER_CUBIC)
        noise = rng.normal(0, 12, (height, width, 1))
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


class GpuSampler:
    """Background `nvidia-smi` sampling of utilisation.gpu (%), stamped with time.time()."""

    def __init__(self, period_ms: int = 100):
        self.samples: list[tuple[float, float]] = []
        exe = shutil.which("nvidia-smi")
        cmd = [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"--loop-ms={period_ms}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) if exe else None
        if self.proc:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.time(), float(line.split(",")[0])))
            except ValueError:
                pass

    def window(self, t0: float, t1: float) -> dict | None:
        vals = [v for t, v in self.samples if t0 <= t <= t1]
        if not vals:
            return None
        return {"mean": round(float(np.mean(vals)), 1), "median": float(np.median(vals)), "n": len(vals)}

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()


def depth_png(depth: np.ndarray) -> bytes:
    """The baseline's output in our convention: per-image min-max -> uint16 PNG."""
    lo, hi = float(depth.min()), float(depth.max())
    norm = (depth - lo) / (hi - lo) if hi > lo else np.zeros_like(depth)
    return D.encode_depth(norm.astype(np.float32), (depth.shape[1], depth.shape[0]))


def run_baseline(
    model_dir: Path, images: list[bytes], cuda: bool, warmup: int = 3
) -> tuple[float, float, int]:
    """(start, end, PNG bytes) of the per-image loop, after `warmup` images."""
    from PIL import Image
    from transformers import pipeline

    pipe = pipeline("depth-estimation", model=str(model_dir), device=0 if cuda else -1)

    def one(data: bytes) -> int:
        result = pipe(Image.open(io.BytesIO(data)).convert("RGB"))
        return len(depth_png(result["predicted_depth"].squeeze().float().cpu().numpy()))

    for data in images[:warmup]:
        one(data)
    _sync(cuda)
    t0 = time.time()
    total = sum(one(data) for data in images)
    _sync(cuda)
    return t0, time.time(), total


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def bench_shard(images: list[bytes], ids: list[int], steps: list, pools: dict, chunk: int) -> list:
    """One shard task: rows `ids` (indices into the shared JPEG list) in chunks through the depth step."""

    def chunks():
        for s in range(0, len(ids), chunk):
            part = ids[s : s + chunk]
            n = len(part)
            yield {"key": [f"img{i}" for i in part], "image": [images[i % len(images)] for i in part],
                   "status": ["ok"] * n, "error": [None] * n}  # fmt: skip

    done = ok = size = 0
    for out in actor_pool.process_chunks(chunks(), steps, pools, salt=ids[0] if ids else 0):
        done += len(out["key"])
        ok += sum(s == "ok" for s in out["status"])
        size += sum(len(d) for d in out["depth"] if d)
    return [done, ok, size]


def run_ray(model_dir: Path, images: list[bytes], n: int, args, cuda: bool) -> tuple[float, list]:
    import ray

    step = D.DepthTarget(str(model_dir), batch_size=args.batch_size, num_gpus=1 if cuda else 0,
                         actor_threads=args.actor_threads)  # fmt: skip
    pools = actor_pool.make_pools([step])
    images_ref = ray.put(images)
    task = ray.remote(num_cpus=1)(bench_shard)
    warm = list(range(args.batch_size * 2))
    ray.get(task.remote(images_ref, warm, [step], pools, args.batch_size))  # kernels and shapes warm
    ids = list(range(n))
    per = args.rows_per_task
    t0 = time.time()
    parts = ray.get([task.remote(images_ref, ids[s : s + per], [step], pools, args.batch_size)
                     for s in range(0, n, per)])  # fmt: skip
    seconds = time.time() - t0
    for actors in pools.values():
        for a in actors:
            ray.kill(a)
    return seconds, [sum(p[k] for p in parts) for k in range(3)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tiny", action="store_true", help="CPU smoke test: tiny model, small images, few of them"
    )
    p.add_argument("--size", default="1024x768", help="synthetic JPEG size WxH (default 1024x768)")
    p.add_argument("--images", type=int, default=3000, help="images for our pool")
    p.add_argument("--baseline-images", type=int, default=200, help="images for the per-image loop")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rows-per-task", type=int, default=128)
    p.add_argument("--actor-threads", type=int, default=2)
    p.add_argument("--baseline-dtype", help="e.g. bfloat16 (default: the pipeline's default, float32)")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs for Ray (default: all)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.images, args.baseline_images = "160x120", 48, 12
        args.batch_size, args.rows_per_task = 8, 16
    width, height = (int(v) for v in args.size.lower().split("x"))
    import torch

    cuda = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix="depth_bench_"))
    model_dir = D.save_random_model(tmp / "model", arch="tiny" if args.tiny else "small")
    images = synthetic_jpegs(16, width, height)
    sampler = GpuSampler()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = str(Path(__file__).resolve().parent.parent)  # Ray workers import sgt_data from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    results: dict = {"size": args.size, "cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                     "cpus": args.cpus, "batch_size": args.batch_size, "arch": "tiny" if args.tiny else "small"}  # fmt: skip

    for name, dtype in [("baseline", args.baseline_dtype)]:
        try:
            sub = [images[i % 16] for i in range(args.baseline_images)]
            t0, t1, total = run_baseline(model_dir, sub, cuda, dtype)
        except Exception as exc:  # noqa: BLE001 - a non-default baseline dtype may fail in some versions
            print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        results[name] = {"images": args.baseline_images, "seconds": round(t1 - t0, 2),
                         "images_per_s": round(args.baseline_images / (t1 - t0), 2), "png_bytes": total,
                         "gpu_util": sampler.window(t0, t1)}  # fmt: skip
        print(name, results[name], flush=True)
    import logging

    import ray

    gpus = torch.cuda.device_count() if cuda else 0
    ray.init(num_cpus=args.cpus, num_gpus=gpus, include_dashboard=False, logging_level=logging.WARNING)
    modes = ["pool"]
    for mode in modes:
        n = args.images
        secs, (done, ok, size) = run_ray(model_dir, images, n, args, cuda)
        t1 = time.time()
        results[mode] = {"images": done, "ok": ok, "seconds": round(secs, 2), "images_per_s": round(done / secs, 2),
                         "png_bytes": size, "gpu_util": sampler.window(t1 - secs, t1)}  # fmt: skip
        print(mode, results[mode], flush=True)
        assert done == ok == n, f"{mode}: {done} rows, {ok} ok, expected {n}"
    ray.shutdown()
    sampler.stop()
    ratio = results["pool"]["images_per_s"] / results["baseline"]["images_per_s"]
    results["ratio"] = round(ratio, 2)
    if "baseline_bf16" in results:
        results["ratio_vs_bf16_baseline"] = round(
            results["pool"]["images_per_s"] / results["baseline_bf16"]["images_per_s"], 2
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\n| {args.size} | images/s | GPU util mean % |\n|---|---|---|")
    for k in [k for k in ("baseline", "baseline_bf16", *modes) if k in results]:
        print(f"| {k} | {results[k]['images_per_s']} | {(results[k]['gpu_util'] or {}).get('mean', 'n/a')} |")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"RESULT depth_pool {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

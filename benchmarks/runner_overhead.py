"""runner_overhead: `sgt-data build proxies` (Ray runner, whole command) vs the same steps in a plain loop.

    python benchmarks/runner_overhead.py [--n 200] [--size 384x256] [--masks 20]

Both sides read the same SA-1B folder, run DecodeImage -> SegTarget -> EdgeTarget -> Prompts and write Parquet
shards; the loop does it in one process without Ray. Prints both wall times and `RESULT runner_overhead <ratio>`
(ours / loop; target <= 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from synth import make_sa1b_folder  # noqa: E402


def plain_loop(inputs: Path, out: Path, shard_rows: int) -> None:
    from sgt_data import shards
    from sgt_data.proxies.build import ProxiesSpec, make_steps
    from sgt_data.runner import drop_transient
    from sgt_data.sources.sa1b import discover, read_samples

    spec = ProxiesSpec()
    steps = make_steps(["seg", "edge"], spec)
    for s in steps:
        getattr(s, "setup", lambda: None)()
    samples = discover(inputs)
    columns = shards.sample_columns(["seg", "edge"])
    for index, start in enumerate(range(0, len(samples), shard_rows)):
        parts = []
        for chunk in read_samples(samples[start : start + shard_rows], spec.chunk_size):
            for step in steps:
                chunk = step(chunk)
            parts.append(drop_transient(chunk))
        rows = {c: [v for p in parts for v in p[c]] for c in columns}
        shards.write_table_atomic(shards.to_table(rows, columns), out / shards.shard_name(index))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", default="384x256", help="WxH")
    ap.add_argument("--masks", type=int, default=20)
    ap.add_argument("--shard-rows", type=int, default=50)
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--skip-ray", action="store_true", help="only the default command vs the loop")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = make_sa1b_folder(tmp / "in", args.n, height, width, args.masks)
        # warm the numba caches and the page cache so neither side pays a first-run cost
        plain_loop(inputs, tmp / "warm", args.shard_rows)
        t0 = time.perf_counter()
        plain_loop(inputs, tmp / "loop", args.shard_rows)
        loop_s = time.perf_counter() - t0
        from sgt_data.cli import main as cli

        argv = ["build", "proxies", "--input", str(inputs), "--output", str(tmp / "ours"), "--level", "seg,edge",
                "--set", f"shard_rows={args.shard_rows}", "--no-progress"]  # fmt: skip
        if args.num_cpus:
            argv += ["--num-cpus", str(args.num_cpus)]
        t0 = time.perf_counter()
        assert cli(argv) == 0
        ours_s = time.perf_counter() - t0
        timings = {"default (auto executor)": ours_s}
        if not args.skip_ray:
            t0 = time.perf_counter()
            assert cli([*argv, "--executor", "ray", "--output", str(tmp / "ray_cold")]) == 0
            timings["--executor ray, cold (incl. Ray start/stop)"] = time.perf_counter() - t0
            import logging

            import ray

            ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
            assert cli([*argv, "--output", str(tmp / "ray_warm_first")]) == 0  # workers start, caches load
            t0 = time.perf_counter()
            assert cli([*argv, "--output", str(tmp / "ray_warm")]) == 0
            timings["ray, warm cluster"] = time.perf_counter() - t0
            ray.shutdown()
    print(f"plain loop: {loop_s:.2f} s ({args.n / loop_s:.1f} img/s)")
    for name, seconds in timings.items():
        print(
            f"build proxies, {name}: {seconds:.2f} s ({args.n / seconds:.1f} img/s, {seconds / loop_s:.2f}x loop)"
        )
    print(f"RESULT runner_overhead {ours_s / loop_s:.2f}")


if __name__ == "__main__":
    main()

"""scaling: `build proxies` throughput on N CPU cores vs 1 core (Ray executor, warm workers).

    python benchmarks/scaling.py [--n 320] [--size 2250x1500] [--masks 100] [--cores 1,16]

SA-1B-sized inputs (1500x2250 JPEG, ~100 masks) are generated in parallel, then for each core count a local Ray
instance with that many CPUs runs the real runner (seg + edge) once to warm the workers and once timed. Prints
images/s per core count and `RESULT scaling <speed-up of the largest count over 1 core>` (target >= 12 at 16).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from synth import make_sa1b_folder  # noqa: E402


def _make(job: tuple[Path, int, int, int, int]) -> None:
    folder, index, height, width, masks = job
    part = make_sa1b_folder(folder / f"part{index}", 1, height, width, masks, seed=index)
    for f in part.iterdir():
        f.rename(folder / f.name.replace("sa_0", f"sa_{index}"))
    part.rmdir()


def timed_build(inputs: Path, out: Path, cores: int, shard_rows: int) -> float:
    import ray

    from sgt_data import runner
    from sgt_data.proxies.build import ProxiesSpec, make_steps, plan_tasks
    from sgt_data.shards import sample_columns

    spec = ProxiesSpec(shard_rows=shard_rows)
    tasks, reader, total, _ = plan_tasks(inputs, spec)
    steps = make_steps(["seg", "edge"], spec)
    opts = runner.RunOptions(num_cpus=cores, progress=False, executor="ray")
    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        runner.run(tasks[:cores], reader, steps, sample_columns(["seg", "edge"]), out / "warm", opts)
        t0 = time.perf_counter()
        runner.run(tasks, reader, steps, sample_columns(["seg", "edge"]), out / "timed", opts)
        return time.perf_counter() - t0
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--size", default="2250x1500", help="WxH")
    ap.add_argument("--masks", type=int, default=100)
    ap.add_argument("--shard-rows", type=int, default=4)
    ap.add_argument("--cores", default=f"1,{os.cpu_count()}")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    cores = [int(c) for c in args.cores.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        t0 = time.perf_counter()
        with Pool(os.cpu_count()) as pool:
            pool.map(_make, [(inputs, i, height, width, args.masks) for i in range(args.n)])
        print(
            f"generated {args.n} samples {width}x{height} with {args.masks} masks in {time.perf_counter() - t0:.1f} s"
        )
        rates = {}
        for c in cores:
            seconds = timed_build(inputs, Path(tmp) / f"out{c}", c, args.shard_rows)
            rates[c] = args.n / seconds
            print(f"{c:>3} core(s): {seconds:.2f} s, {rates[c]:.1f} img/s")
    top = max(cores)
    print(f"speed-up {top} vs 1 core: {rates[top] / rates[min(cores)]:.2f}x")
    print(f"RESULT scaling {rates[top] / rates[min(cores)]:.2f}")


if __name__ == "__main__":
    main()

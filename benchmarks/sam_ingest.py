"""sam_ingest: SAM-SGT tar -> canonical shards (ours) vs only reading the tar's members (the floor).

    python benchmarks/sam_ingest.py [--copies 40] [--reps 3]

Builds one SAM-SGT-shaped tar (`sam_selection/sa_<id>.jpg` + `sam_mask/sa_<id>.png`) from the bundled sample
repeated `--copies` times under new keys. Baseline: `tarfile` streaming every member's bytes. Ours: the header scan
and key pairing of `build sam` (driver side) plus `runner.process_shard` on every shard task (what each Ray task
runs: read by offset, header probe, Parquet write with the datasets Image layout), without Ray start-up. Prints MB/s
for both and `RESULT sam_ingest <ratio>` = our MB/s / baseline MB/s.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sgt_data import runner, shards  # noqa: E402
from sgt_data.sources.sam import plan_tar_tasks  # noqa: E402
from sgt_data.sources.sam_layout import read_sam_task  # noqa: E402
from tests.support.sam_tars import colour_mask  # noqa: E402


def make_tar(path: Path, copies: int) -> int:
    sample = ROOT / "examples" / "sa1b"
    pairs = [(p.read_bytes(), colour_mask(p.with_suffix(".json"))) for p in sorted(sample.glob("sa_*.jpg"))]
    with tarfile.open(path, "w") as tar:
        n = 0
        for _ in range(copies):
            for jpg, png in pairs:
                n += 1
                for name, data in ((f"sam_selection/sa_{n}.jpg", jpg), (f"sam_mask/sa_{n}.png", png)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return n


def baseline(tar_path: Path) -> int:
    read = 0
    with tarfile.open(tar_path, "r|") as tar:
        for member in tar:
            handle = tar.extractfile(member)
            if handle is not None:
                read += len(handle.read())
    return read


def ours(tar_path: Path, out: Path, rows_per_shard: int) -> int:
    tasks, _, _ = plan_tar_tasks({1: [tar_path]}, rows_per_shard)
    rows = 0
    for task in tasks:
        stats = runner.process_shard(task, read_sam_task, [], shards.INGEST_COLUMNS, str(out))
        rows += stats["rows"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=40, help="times the 8-image sample is repeated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows-per-shard", type=int, default=100)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sam_ingest-"))
    try:
        tar_path = work / "sam_selection-00001.tar"
        samples = make_tar(tar_path, args.copies)
        mb = tar_path.stat().st_size / 1e6
        baseline(tar_path)  # warm the page cache for both sides
        times: dict[str, list[float]] = {"ours": [], "read members": []}
        for rep in range(args.reps):
            t = time.perf_counter()
            assert ours(tar_path, work / f"out-{rep}", args.rows_per_shard) == samples
            times["ours"].append(time.perf_counter() - t)
            t = time.perf_counter()
            baseline(tar_path)
            times["read members"].append(time.perf_counter() - t)
            shutil.rmtree(work / f"out-{rep}")
        speed = {name: mb / statistics.median(ts) for name, ts in times.items()}
        for name, ts in times.items():
            print(
                f"{name:>13}: median {statistics.median(ts):.3f} s = {speed[name]:.0f} MB/s over {args.reps}"
            )
        print(f"{samples} samples, {mb:.0f} MB tar, {args.rows_per_shard} rows per shard")
        print(f"RESULT sam_ingest {speed['ours'] / speed['read members']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""sam_download: our verified download (`hub_download.download_all`) vs plain `snapshot_download`, same server.

    python benchmarks/sam_download.py [--files 4] [--mb 64] [--reps 3]

A local olah (127.0.0.1, offline) serves a git repo of LFS-tracked random files shaped like SAM-SGT tar shards.
Both sides fetch every file into a fresh folder with the same number of parallel workers; ours also hashes
(sha256) and checks size while streaming. Runs alternate (ours, baseline, ours, ...) and the medians are
compared. Prints `RESULT sam_download <ratio>` = baseline seconds / our seconds (>= 0.9 means verification costs
<= 10%). Needs olah (`.venv-olah`, see tests/support/olah.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The baseline reads these at import: set them first (the point of the whole `--mirror` story).
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sgt_data import hub_download  # noqa: E402
from tests.support import hub_repo, olah  # noqa: E402

REPO_ID = "Two-hot/SAM-SGT"


def ours(url: str, dest: Path, workers: int) -> None:
    listing = hub_download.list_repo(url, REPO_ID)
    hub_download.download_all(listing, listing.files, dest, workers=workers, progress=False)


def baseline(url: str, dest: Path, workers: int) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(REPO_ID, repo_type="dataset", revision="main", local_dir=dest, endpoint=url,
                      max_workers=workers)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--mb", type=int, default=64, help="size of each file in MiB")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sam_download-"))
    try:
        files = {
            f"sam_selection/sam_selection-{i:05d}.tar": os.urandom(args.mb << 20)
            for i in range(1, args.files + 1)
        }
        hub_repo.build_repo(work / "mirrors", REPO_ID, files)
        total = args.files * args.mb
        times: dict[str, list[float]] = {"ours": [], "snapshot_download": []}
        with olah.running_olah(work / "mirrors", work / "olah") as server:
            for rep in range(args.reps):
                for name, fn in (("ours", ours), ("snapshot_download", baseline)):
                    dest = work / f"{name}-{rep}"
                    t = time.perf_counter()
                    fn(server.url, dest, args.workers)
                    times[name].append(time.perf_counter() - t)
                    got = sum(p.stat().st_size for p in dest.rglob("*.tar"))
                    assert got == total << 20, f"{name} fetched {got} bytes, expected {total << 20}"
                    shutil.rmtree(dest)
        for name, ts in times.items():
            med = statistics.median(ts)
            print(
                f"{name:>18}: median {med:.2f} s ({total / med:.0f} MiB/s) over {args.reps}: {[round(t, 2) for t in ts]}"
            )
        ratio = statistics.median(times["snapshot_download"]) / statistics.median(times["ours"])
        print(f"{args.files} x {args.mb} MiB LFS files from olah on 127.0.0.1, {args.workers} workers each")
        print(f"RESULT sam_download {ratio:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

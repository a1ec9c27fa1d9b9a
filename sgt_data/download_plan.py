"""Download plan: what is left to fetch, what the output will need, and whether the disk can hold it.

`build sam` prints the plan (files, bytes, free space) before any byte is downloaded and stops when it does not
fit: a 190 GB download that dies at 95% on a full disk is the failure this prevents. `SGT_DATA_FREE_BYTES`
overrides the measured free space (tests force a tiny disk with it; it also helps on filesystems whose free-space
report is wrong).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sgt_data.hub_download import RemoteFile, is_verified, partial_path

FREE_BYTES_ENV = "SGT_DATA_FREE_BYTES"


class InsufficientSpace(RuntimeError):
    """The plan needs more disk than is free."""


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def free_space(path: Path) -> int:
    """Free bytes on `path`'s filesystem; `SGT_DATA_FREE_BYTES` overrides (to test the check, or odd mounts)."""
    forced = os.environ.get(FREE_BYTES_ENV)
    if forced:
        return int(forced)
    return shutil.disk_usage(_existing_ancestor(path)).free


@dataclass
class DownloadPlan:
    files: list[RemoteFile]
    dest: Path
    done: list[str]  # already downloaded and verified
    partial_bytes: int  # bytes already on disk in resumable partial files
    fetch_bytes: int  # bytes still to download
    extra_bytes: int  # what the caller will write besides (e.g. shards)
    free_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def needed_bytes(self) -> int:
        return self.fetch_bytes + self.extra_bytes


def make_plan(
    files: list[RemoteFile], dest: Path, extra_bytes: int = 0, free_bytes: int | None = None
) -> DownloadPlan:
    """What is left to fetch into `dest`, and whether it fits; `free_bytes` defaults to `free_space(dest)`."""
    done, partial, fetch = [], 0, 0
    for f in files:
        if is_verified(dest, f):
            done.append(f.path)
            continue
        part = partial_path(dest, f.path)
        have = part.stat().st_size if part.exists() and part.stat().st_size <= f.size else 0
        partial += have
        fetch += f.size - have
    free = free_space(dest) if free_bytes is None else free_bytes
    return DownloadPlan(files, dest, done, partial, fetch, extra_bytes, free)


def check_space(plan: DownloadPlan, margin: float = 0.02) -> None:
    """Raise InsufficientSpace (naming sizes and fixes) unless the plan fits with a small margin."""
    need = int(plan.needed_bytes * (1 + margin))
    if need > plan.free_bytes:
        raise InsufficientSpace(
            f"not enough disk at {plan.dest}: need {human(need)} ({human(plan.fetch_bytes)} to download + "
            f"{human(plan.extra_bytes)} of output), {human(plan.free_bytes)} free. Free space, point "
            "--download-dir / the output at a larger disk, or take fewer shards (--shards / --limit)"
        )


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"

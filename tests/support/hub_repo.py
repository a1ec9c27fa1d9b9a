"""Build a Hub-shaped git repository that olah serves from its mirrors path, LFS files included.

olah reads local mirrors with GitPython and recognises an LFS pointer file (`version ...` / `oid sha256:...` /
`size N`) whose blob lies at `.git/lfs/objects/<oid[0:2]>/<oid[2:4]>/<oid>`; no git-lfs binary is needed. The
repository gets one commit on `main` with a fixed author and date, so its commit sha is reproducible.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "sgt-data tests",
    "GIT_AUTHOR_EMAIL": "tests@localhost",
    "GIT_COMMITTER_NAME": "sgt-data tests",
    "GIT_COMMITTER_EMAIL": "tests@localhost",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
}


@dataclass(frozen=True)
class RepoFileInfo:
    """What the Hub should report for one file: size and, for LFS files, the sha256 oid."""

    path: str
    size: int
    sha256: str
    lfs: bool


@dataclass
class HubRepo:
    path: Path
    repo_id: str
    repo_type: str
    commit: str = ""
    files: dict[str, RepoFileInfo] = field(default_factory=dict)


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs v1 pointer file text for a blob."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lfs_object_path(repo_path: Path, sha256: str) -> Path:
    return repo_path / ".git" / "lfs" / "objects" / sha256[:2] / sha256[2:4] / sha256


def _git(repo_path: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    out = subprocess.run(
        ["git", "-C", str(repo_path), *args], env=env, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo_path}: {out.stderr.strip()}")
    return out.stdout.strip()


def _store_lfs(repo_path: Path, content: bytes | Path) -> tuple[str, int]:
    """Put the blob in the LFS object store; returns (oid, size)."""
    if isinstance(content, Path):
        oid, size = _sha256_file(content), content.stat().st_size
        target = lfs_object_path(repo_path, oid)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(content, target)
    else:
        oid, size = hashlib.sha256(content).hexdigest(), len(content)
        target = lfs_object_path(repo_path, oid)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return oid, size


def build_repo(
    mirrors_path: str | Path,
    repo_id: str,
    files: dict[str, bytes | Path],
    lfs: tuple[str, ...] = ("*.tar", "*.parquet"),
    repo_type: str = "dataset",
) -> HubRepo:
    """Create `<mirrors_path>/<repo_type>s/<repo_id>` with `files` (bytes or a local file to copy) committed.

    Paths matching an `lfs` pattern (fnmatch on the repo path) become pointer files + LFS blobs. Returns the
    repo with its commit sha and the size/sha256 the Hub listing should report for each file."""
    repo = HubRepo(Path(mirrors_path) / f"{repo_type}s" / repo_id, repo_id, repo_type)
    if repo.path.exists():
        raise FileExistsError(f"{repo.path} exists; build each test repo in a fresh mirrors folder")
    repo.path.mkdir(parents=True)
    _git(repo.path, "init", "-q", "-b", "main")
    for rel, content in sorted(files.items()):
        dest = repo.path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if any(fnmatch.fnmatchcase(rel, pat) for pat in lfs):
            oid, size = _store_lfs(repo.path, content)
            dest.write_bytes(lfs_pointer(oid, size))
            repo.files[rel] = RepoFileInfo(rel, size, oid, True)
        else:
            data = content.read_bytes() if isinstance(content, Path) else content
            dest.write_bytes(data)
            repo.files[rel] = RepoFileInfo(rel, len(data), hashlib.sha256(data).hexdigest(), False)
    _git(repo.path, "add", "-A")
    _git(repo.path, "commit", "-q", "-m", "test data")
    repo.commit = _git(repo.path, "rev-parse", "HEAD")
    return repo


def replace_lfs_blob(repo: HubRepo, rel: str, data: bytes) -> None:
    """Swap the bytes the server sends for LFS file `rel` while its pointer keeps the old oid and size."""
    info = repo.files[rel]
    if not info.lfs:
        raise ValueError(f"{rel} is not an LFS file of {repo.repo_id}")
    lfs_object_path(repo.path, info.sha256).write_bytes(data)

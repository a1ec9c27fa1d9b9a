"""List a Hub repo with its LFS metadata and download its files verified and resumable (plan: download_plan.py).

Why not plain `snapshot_download`: it neither checks sha256 nor tells how much disk a 190 GB download needs. Here
every file is fetched from `<endpoint>/<type>s/<repo>/resolve/<commit>/<path>` (the endpoint is always passed
explicitly; plain HTTP, so no Xet), hashed while it streams, and compared with what the listing says: sha256 and
size for LFS files, the git blob sha1 for small files. A mismatch deletes the file and fetches it once more; a
second mismatch fails naming the file. Partial files live in `<dest>/.sgt-partial/` and resume with
`Range: bytes=N-` (a server that ignores Range just restarts the file); a dropped link is retried with backoff, and
a rerun resumes from what is on disk. Verified files get a stamp in `<dest>/.sgt-verified/` so reruns skip them
without re-hashing hundreds of GB.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sgt_data.hub import redact

CHUNK = 1 << 20
PARTIAL_DIR = ".sgt-partial"
STAMP_DIR = ".sgt-verified"


class DownloadError(RuntimeError):
    """A file could not be fetched or does not match the Hub's metadata."""


@dataclass(frozen=True)
class RemoteFile:
    """One file as the Hub lists it: LFS files carry sha256, small files their git blob sha1."""

    path: str
    size: int
    sha256: str | None = None
    git_sha1: str | None = None

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


@dataclass
class RepoListing:
    endpoint: str
    repo_id: str
    repo_type: str
    revision: str
    commit: str
    files: list[RemoteFile] = field(default_factory=list)

    def url(self, path: str) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        quoted = urllib.parse.quote(path)
        return f"{self.endpoint}/{prefix}{self.repo_id}/resolve/{self.commit}/{quoted}"


def list_repo(
    endpoint: str, repo_id: str, repo_type: str = "dataset", revision: str = "main", token: str | None = None
) -> RepoListing:
    """Resolve `revision` to a commit and list every file there with size and LFS sha256 (one tree call)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.repo_info(repo_id, repo_type=repo_type, revision=revision)
        entries = api.list_repo_tree(repo_id, repo_type=repo_type, revision=info.sha, recursive=True)
        files = [
            RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None, None if e.lfs else e.blob_id)
            for e in entries
            if isinstance(e, RepoFile)
        ]
    except Exception as e:  # noqa: BLE001 - every Hub failure gets the same actionable message
        raise DownloadError(
            f"cannot list {repo_type} {repo_id}@{revision} on {endpoint}: {redact(e, token)}; check the repo id, "
            "the revision, your token (--token-env) and the endpoint (--endpoint / --mirror)"
        ) from e
    return RepoListing(endpoint, repo_id, repo_type, revision, info.sha, sorted(files, key=lambda f: f.path))


# ---------------------------------------------------------------- verified, resumable download


def partial_path(dest: Path, rel: str) -> Path:
    return dest / PARTIAL_DIR / f"{rel}.part"


def _stamp_path(dest: Path, rel: str) -> Path:
    return dest / STAMP_DIR / f"{rel}.json"


def _hasher(f: RemoteFile):
    """sha256 for LFS files; git's blob sha1 (header + content) for regular files."""
    if f.lfs:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(f"blob {f.size}\0".encode())
    return h


def _expected(f: RemoteFile) -> str | None:
    return f.sha256 if f.lfs else f.git_sha1


def is_verified(dest: Path, f: RemoteFile) -> bool:
    """True when `dest/<path>` was verified against this exact metadata and has not changed since."""
    final, stamp = dest / f.path, _stamp_path(dest, f.path)
    if not (final.exists() and stamp.exists()):
        return False
    try:
        rec = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    st = final.stat()
    return (
        rec == {"size": f.size, "digest": _expected(f), "mtime_ns": st.st_mtime_ns} and st.st_size == f.size
    )


def _write_stamp(dest: Path, f: RemoteFile) -> None:
    stamp = _stamp_path(dest, f.path)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    rec = {"size": f.size, "digest": _expected(f), "mtime_ns": (dest / f.path).stat().st_mtime_ns}
    stamp.write_text(json.dumps(rec))


class _SameHostAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never send the Hub token to another host (e.g. a CDN with signed URLs)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if (
            new is not None
            and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc
        ):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_SameHostAuth)
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError)


def _prefix_hash(part: Path, f: RemoteFile):
    h = _hasher(f)
    with open(part, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h


def _stream_once(url: str, part: Path, f: RemoteFile, headers: dict, timeout: float, h, on_bytes) -> tuple:
    """One GET, appending to `part` from its current size; returns (hasher, bytes on disk)."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={**headers, **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have == f.size:
            return h, have
        raise
    with resp:
        start = 0
        if resp.status == 206:
            start = int((resp.headers.get("Content-Range") or "bytes 0-").split()[1].split("-")[0])
        if start != have:  # the server ignored Range (or sent another one): start the file over
            have, h = 0, _hasher(f)
        with open(part, "r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            while block := resp.read(CHUNK):
                out.write(block)
                h.update(block)
                have += len(block)
                on_bytes(len(block))
    return h, have


def download_file(
    url: str,
    dest: Path,
    f: RemoteFile,
    headers: dict | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> Path:
    """Fetch `f` into `dest/<path>`, resuming a partial file, retrying dropped links, verifying size + hash."""
    final, part = dest / f.path, partial_path(dest, f.path)
    if is_verified(dest, f):
        return final
    part.parent.mkdir(parents=True, exist_ok=True)
    if part.exists() and part.stat().st_size > f.size:
        part.unlink()
    for fetch in (1, 2):  # a mismatch is fetched once more from scratch, then it is an error
        h = _prefix_hash(part, f) if part.exists() else _hasher(f)
        attempt = 0
        while True:
            try:
                h, have = _stream_once(url, part, f, headers or {}, timeout, h, on_bytes)
                if have >= f.size:
                    break
                raise DownloadError(f"connection closed after {have} of {f.size} bytes")
            except urllib.error.HTTPError as e:
                if e.code not in (408, 429) and e.code < 500:
                    raise DownloadError(
                        f"{f.path}: HTTP {e.code} from {url}; check access and the endpoint"
                    ) from e
                err: Exception = e
            except (*_TRANSIENT, DownloadError) as e:
                err = e
            attempt += 1
            if attempt > retries:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{f.path}: download failed after {retries} retries ({redact(err)}); {have} of {f.size} "
                    "bytes are kept: rerun the same command to resume"
                ) from err
            time.sleep(min(backoff * 2 ** (attempt - 1), 30.0))
            h = _prefix_hash(part, f) if part.exists() else _hasher(f)
        size, digest = part.stat().st_size, h.hexdigest()
        if size == f.size and digest == _expected(f):
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, final)
            _write_stamp(dest, f)
            return final
        part.unlink()
        if fetch == 2:
            raise DownloadError(
                f"{f.path}: downloaded twice and still does not match the Hub metadata (got {size} bytes, "
                f"{'sha256' if f.lfs else 'git sha1'} {digest}; expected {f.size} bytes, {_expected(f)}). "
                "The server or a proxy on the way serves altered data; try another --endpoint"
            )
    raise AssertionError("unreachable")


def download_all(
    listing: RepoListing,
    files: list[RemoteFile],
    dest: Path,
    token: str | None = None,
    workers: int = 4,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
) -> list[Path]:
    """Download `files` of `listing` into `dest` concurrently; raises DownloadError on the first failure."""
    headers = {"User-Agent": "sgt-data"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(f.size for f in files), unit="B", unit_scale=True, desc="download")
    count = bar.update if bar is not None else (lambda n: None)

    def one(f: RemoteFile) -> Path:
        return download_file(listing.url(f.path), dest, f, headers, retries, timeout, on_bytes=count)

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        return list(pool.map(one, files))
    finally:
        # On a failure, report it now: queued downloads are cancelled instead of run (hours on a 190 GB plan);
        # files already being fetched finish or fail on their own, and a rerun resumes them.
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()

"""Byte-range access to a LLaVA-OV-shaped dataset (Hub repo or local folder): listing, footers, row groups.

The subsampler never downloads a whole Parquet file. It lists the files, reads each footer with two ranged reads
(the 8-byte tail, then exactly the metadata), and later fetches only the column chunks of the row groups that
hold sampled rows, for the columns it needs. pyarrow decodes those chunks from a `SparseFile` that serves reads
from the fetched ranges, so pyarrow's own reading logic is used unchanged.

Servers that ignore `Range` (olah's local-mirror route answers 200 with the whole file) still work: the whole
body is kept for that file and counted as fetched, so byte counts stay honest.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MAGIC = b"PAR1"
MERGE_GAP = 4096  # fetch two column chunks in one request when at most this many unneeded bytes separate them


@dataclass(frozen=True)
class FileRef:
    """One Parquet file of one config: repo-relative path (`<config>/train-00000-of-00003.parquet`) and size."""

    config: str
    path: str
    size: int


@dataclass
class Counter:
    """Bytes and requests a source fetched (payload bytes, as received)."""

    bytes: int = 0
    requests: int = 0
    whole_files: int = 0


class LocalSource:
    """A local copy of the dataset: `<root>/<config>/**/*.parquet`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.revision = "local"
        self.counter = Counter()

    def describe(self) -> str:
        return str(self.root)

    def list_files(self) -> list[FileRef]:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"--source {self.root}: not a folder (expected <config>/<file>.parquet, e.g. a Hub snapshot)"
            )
        refs = []
        for path in sorted(self.root.glob("*/**/*.parquet")):
            rel = path.relative_to(self.root).as_posix()
            refs.append(FileRef(rel.split("/", 1)[0], rel, path.stat().st_size))
        return refs

    def forget(self, ref: FileRef) -> None:
        """Nothing is kept between reads of a local file."""

    def read_range(self, ref: FileRef, start: int, end: int) -> bytes:
        with open(self.root / ref.path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        self.counter.bytes += len(data)
        self.counter.requests += 1
        return data


@dataclass
class HubSource:
    """A dataset repo on the Hub (or a mirror / local server): listing through `HfApi`, ranged GETs on resolve."""

    repo_id: str
    revision: str
    endpoint: str
    token: str | None = None
    counter: Counter = field(default_factory=Counter)
    _whole: dict[str, bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict:
        # Shipped to Ray workers: no cached bodies, no lock.
        return {k: v for k, v in self.__dict__.items() if k not in ("_whole", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._whole, self._lock = {}, threading.Lock()

    def describe(self) -> str:
        return f"{self.endpoint}/datasets/{self.repo_id}@{self.revision}"

    def list_files(self) -> list[FileRef]:
        """Every `<config>/**.parquet` at the revision, which is pinned to its commit sha here (the same listing
        code and error messages as `build sam`)."""
        from sgt_data.hub_download import list_repo

        listing = list_repo(self.endpoint, self.repo_id, "dataset", self.revision, self.token)
        self.revision = listing.commit
        refs = [
            FileRef(f.path.split("/", 1)[0], f.path, int(f.size))
            for f in listing.files
            if "/" in f.path and f.path.endswith(".parquet")
        ]
        return sorted(refs, key=lambda r: r.path)

    def read_range(self, ref: FileRef, start: int, end: int) -> bytes:
        whole = self._whole.get(ref.path)
        if whole is not None:
            return whole[start:end]
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

        url = hf_hub_url(
            self.repo_id, ref.path, repo_type="dataset", revision=self.revision, endpoint=self.endpoint
        )
        headers = build_hf_headers(token=self.token)
        headers["Range"] = f"bytes={start}-{end - 1}"
        resp = http_backoff("GET", url, headers=headers, timeout=60)
        hf_raise_for_status(resp)
        data = resp.content
        with self._lock:
            self.counter.bytes += len(data)
            self.counter.requests += 1
        if resp.status_code == 206 and len(data) == end - start:
            return data
        if resp.status_code == 200 and len(data) == ref.size:
            # The server ignored Range and sent the whole file: keep it for this file's later reads.
            with self._lock:
                self._whole[ref.path] = data
                self.counter.whole_files += 1
            return data[start:end]
        raise OSError(
            f"{self.describe()}/{ref.path}: asked bytes {start}-{end - 1}, got HTTP {resp.status_code} with "
            f"{len(data)} bytes (file size {ref.size}); the server's range support is broken, retry later"
        )

    def forget(self, ref: FileRef) -> None:
        """Drop a whole-file body kept for a Range-ignoring server (call when done with the file)."""
        self._whole.pop(ref.path, None)


def read_footer(source, ref: FileRef) -> bytes:
    """The file's footer (`<thrift metadata><4-byte length>PAR1`) in two ranged reads."""
    if ref.size < 12:
        raise ValueError(f"{ref.path}: {ref.size} bytes is too small for a Parquet file")
    tail = source.read_range(ref, ref.size - 8, ref.size)
    if tail[4:] != MAGIC:
        raise ValueError(f"{ref.path}: no Parquet magic at the end; not a Parquet file (or a truncated one)")
    meta_len = int.from_bytes(tail[:4], "little")
    if meta_len + 12 > ref.size:
        raise ValueError(f"{ref.path}: footer length {meta_len} exceeds the file size {ref.size}")
    return source.read_range(ref, ref.size - 8 - meta_len, ref.size - 8) + tail


def parse_footer(footer: bytes) -> pq.FileMetaData:
    """Parse footer bytes alone: pyarrow reads metadata from the end of `PAR1 + footer`."""
    return pq.read_metadata(pa.BufferReader(MAGIC + footer))


def chunk_ranges(md: pq.FileMetaData, rg: int, columns: list[str]) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of the column chunks of row group `rg` whose top-level column is in `columns`,
    with neighbours closer than MERGE_GAP merged into one request."""
    group = md.row_group(rg)
    spans = []
    for i in range(group.num_columns):
        col = group.column(i)
        if col.path_in_schema.split(".", 1)[0] not in columns:
            continue
        start = col.data_page_offset
        if col.has_dictionary_page and col.dictionary_page_offset and col.dictionary_page_offset > 0:
            start = min(start, col.dictionary_page_offset)
        spans.append((start, start + col.total_compressed_size))
    spans.sort()
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start - merged[-1][1] <= MERGE_GAP:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


class SparseFile(io.RawIOBase):
    """A read-only file of `size` bytes made of fetched segments; a read outside them is fetched on demand."""

    def __init__(self, source, ref: FileRef, segments: dict[int, bytes]):
        self.source, self.ref, self.segments = source, ref, dict(segments)
        self.pos = 0
        self.misses = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.ref.size}[whence]
        self.pos = base + offset
        return self.pos

    def _find(self, start: int, end: int) -> bytes | None:
        for seg_start, data in self.segments.items():
            if seg_start <= start and end <= seg_start + len(data):
                return data[start - seg_start : end - seg_start]
        return None

    def read(self, n: int = -1) -> bytes:
        end = self.ref.size if n is None or n < 0 else min(self.ref.size, self.pos + n)
        if end <= self.pos:
            return b""
        data = self._find(self.pos, end)
        if data is None:  # pyarrow asked for bytes the plan did not predict: fetch them (counted)
            self.misses += 1
            data = self.source.read_range(self.ref, self.pos, end)
            self.segments[self.pos] = data
        self.pos = end
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def read_row_group(source, ref: FileRef, footer: bytes, rg: int, columns: list[str]) -> pa.Table:
    """Row group `rg` of `ref`, only `columns` (those the file has), fetching only their column chunks."""
    md = parse_footer(footer)
    present = [c for c in columns if c in md.schema.to_arrow_schema().names]
    segments = {s: source.read_range(ref, s, e) for s, e in chunk_ranges(md, rg, present)}
    segments[ref.size - len(footer)] = footer
    sparse = SparseFile(source, ref, segments)
    return pq.ParquetFile(sparse, metadata=md, pre_buffer=False).read_row_group(rg, columns=present)

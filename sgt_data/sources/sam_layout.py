"""SAM-SGT layout: find the tar shards in a repo listing, pair tar members by key, turn pairs into rows.

What is known of `Two-hot/SAM-SGT` (spec data.md §4): images in `sam_selection/sam_selection-000NN.tar`
(`sa_<id>.jpg`), colour masks `sam_mask/sa_<id>.png`, lists under `file_names/*.txt`. What is not known: whether
the masks sit inside the same tars or in separate `sam_mask*-000NN.tar` shards. Both are handled the same way:
every tar of a shard index (`...-000NN.tar`) is scanned (headers only, `tar_safe.scan`) and members are paired
by key (`sa_<id>`) across that set. Anything else fails with a listing of what the repo holds.

Rows (INGEST_COLUMNS): image bytes as they are, `sam_mask` = the PNG as it is (the ready-made seg target),
`annotations` when a `sa_<id>.json` partner exists. Missing partners, duplicates, undecodable or truncated
images and rejected (unsafe) members all become error rows: counts in == counts out.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

from sgt_data.errors import BadImage, BadTarget, MissingPartner, SampleError, UnsafeMember
from sgt_data.sources import tar_safe
from sgt_data.sources.sa1b import MemberRef, parse_annotations, rows_to_batch

SHARD_TAR = re.compile(r"(?:^|/)(?P<kind>sam_selection|sam_mask)[^/]*?-(?P<index>\d+)\.tar$")
FILE_LIST = re.compile(r"^file_names/.+\.txt$")
MEMBER = re.compile(r"^(?P<key>sa_[^/]+?)\.(?P<ext>jpe?g|png|json)$", re.IGNORECASE)
ROLES = {"jpg": "image", "jpeg": "image", "png": "mask", "json": "annotations"}
STRIDE = 100  # output shard index = tar index * STRIDE + part: stable whatever subset is built


class LayoutError(ValueError):
    """The repo (or folder) does not look like SAM-SGT."""


@dataclass
class SamLayout:
    shards: dict[int, list[str]]  # tar index -> every tar path of that index (image tar, mask tars)
    file_lists: list[str]
    other: list[str]


def discover_layout(paths: Iterable[str], where: str) -> SamLayout:
    """Classify repo paths; raise LayoutError listing what was found when no SAM-SGT image tar is there."""
    shards: dict[int, list[str]] = {}
    kinds: dict[int, set[str]] = {}
    lists, other = [], []
    for path in sorted(paths):
        m = SHARD_TAR.search(path)
        if m:
            shards.setdefault(int(m["index"]), []).append(path)
            kinds.setdefault(int(m["index"]), set()).add(m["kind"])
        elif FILE_LIST.match(path):
            lists.append(path)
        else:
            other.append(path)
    if not any("sam_selection" in k for k in kinds.values()):
        raise LayoutError(
            f"{where}: no SAM-SGT image shards (sam_selection*-NNNNN.tar) found.\n{summarise(other)}"
        )
    orphans = sorted(i for i, k in kinds.items() if "sam_selection" not in k)
    if orphans:
        raise LayoutError(
            f"{where}: mask shards without an image shard of the same index: {orphans}; the layout changed — "
            f"please report it.\n{summarise(sorted(p for i in orphans for p in shards[i]) + other)}"
        )
    return SamLayout(dict(sorted(shards.items())), lists, other)


def summarise(paths: list[str], show: int = 20) -> str:
    """Counts per top folder and extension, then the first paths: what a user needs to report a new layout."""
    groups = Counter(
        f"{PurePosixPath(p).parts[0] if '/' in p else '.'}/*{PurePosixPath(p).suffix}" for p in paths
    )
    lines = [f"  {n:6d}  {g}" for g, n in groups.most_common()]
    lines += [f"  {p}" for p in paths[:show]] + (
        [f"  ... {len(paths) - show} more"] if len(paths) > show else []
    )
    return "found:\n" + ("\n".join(lines) if lines else "  (nothing)")


def parse_selection(text: str) -> set[int]:
    """`3`, `1-4`, `1-4,7,9-10` -> tar indices (the NN in sam_selection-000NN.tar)."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"--shards {text!r}: use indices and ranges like 1-4,7")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def select(layout: SamLayout, shards: str | None, limit: int | None) -> list[int]:
    """Tar indices to build: `--shards` (by index) then the first `--limit` of them."""
    chosen = sorted(layout.shards)
    if shards:
        wanted = parse_selection(shards)
        missing = sorted(wanted - set(chosen))
        if missing:
            raise LayoutError(f"--shards {shards}: no shard {missing} (available: {chosen[0]}..{chosen[-1]})")
        chosen = [i for i in chosen if i in wanted]
    return chosen[:limit] if limit else chosen


# ---------------------------------------------------------------- pairing (driver) and rows (shard tasks)


@dataclass(frozen=True)
class SamSample:
    key: str
    origin: str
    refs: dict[str, MemberRef] = field(default_factory=dict)
    status: str | None = None  # set for samples that are errors before any byte is read
    error: str | None = None


def pair_members(tars: list[tuple[str, list[tar_safe.Member], list[tar_safe.Rejected]]]) -> list[SamSample]:
    """Samples of one shard index: members of all its tars paired by key; rejected/duplicate members as errors."""
    found: dict[str, dict[str, MemberRef]] = {}
    origin: dict[str, str] = {}
    errors: list[SamSample] = []
    for tar_path, members, rejected in tars:
        tar_name = PurePosixPath(tar_path).name
        for m in members:
            mm = MEMBER.match(PurePosixPath(m.name).name)
            if not mm:
                continue  # webdataset extras (e.g. __key__.txt) carry no sample
            role, key = ROLES[mm["ext"].lower()], mm["key"]
            if role in found.get(key, {}):
                errors.append(SamSample(f"{key}#dup:{tar_name}:{m.name}", f"{tar_name}:{m.name}", status="duplicate_member",
                                        error=f"{tar_name} member {m.name!r}: a second {role} for {key}; the first "
                                        "one is used, this one is dropped"))  # fmt: skip
                continue
            found.setdefault(key, {})[role] = m.ref
            origin.setdefault(key, f"{tar_name}:{m.name}")
        for r in rejected:
            errors.append(
                SamSample(
                    f"{tar_name}:{r.name}",
                    f"{tar_name}:{r.name}",
                    status=UnsafeMember.status,
                    error=r.message(),
                )
            )
    samples = [SamSample(k, origin[k], refs) for k, refs in sorted(found.items())]
    return samples + sorted(errors, key=lambda s: s.key)


def probe(data: bytes, what: str, error: type[SampleError]) -> tuple[int, int]:
    """(width, height) from the header, plus a cheap end-marker check that catches truncated files."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height, fmt = im.width, im.height, im.format
    except Exception:  # noqa: BLE001 - PIL raises many types for bad bytes
        # A fixed message: PIL's texts can hold object addresses, and shards must be byte-reproducible.
        raise error(f"{what}: not a readable image ({len(data)} bytes starting {data[:8].hex()})") from None
    tail = data[-1024:]
    if (fmt == "JPEG" and b"\xff\xd9" not in tail) or (fmt == "PNG" and b"IEND" not in tail):
        raise error(f"{what}: truncated {fmt} ({len(data)} bytes, no end marker); re-download the shard")
    return width, height


class TarReader:
    """Reads member bytes by offset, keeping one open handle per tar (a shard reads thousands of members)."""

    def __init__(self) -> None:
        self._files: dict[str, BinaryIO] = {}

    def read(self, ref: MemberRef) -> bytes:
        if ref.offset < 0:
            return ref.read()
        f = self._files.get(ref.path)
        if f is None:
            f = self._files[ref.path] = open(ref.path, "rb")  # noqa: SIM115 - closed in close()
        f.seek(ref.offset)
        data = f.read(ref.size)
        if len(data) != ref.size:
            raise OSError(f"{ref.path}: member at {ref.offset} cut short ({len(data)} of {ref.size} bytes)")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def sam_row(sample: SamSample, source: str = "sam-sgt", reader: TarReader | None = None) -> dict:
    """One output row for a paired sample; any problem becomes the row's status + error."""
    read = reader.read if reader is not None else (lambda ref: ref.read())
    row = {"key": sample.key, "source": source, "origin": sample.origin, "image": None, "width": None,
           "height": None, "annotations": None, "sam_mask": None, "status": "ok", "error": None}  # fmt: skip
    refs = sample.refs
    try:
        if sample.status:
            raise SampleError(sample.error or sample.status, status=sample.status)
        if "image" not in refs:
            raise MissingPartner(
                f"{sample.origin}: mask without its image {sample.key}.jpg in this shard's tars"
            )
        row["image"] = read(refs["image"])
        row["width"], row["height"] = probe(row["image"], f"{sample.origin} image", BadImage)
        if "mask" not in refs:
            raise MissingPartner(
                f"{sample.origin}: image without its mask sam_mask/{sample.key}.png in this shard"
            )
        row["sam_mask"] = read(refs["mask"])
        probe(row["sam_mask"], f"{sample.origin} mask {sample.key}.png", BadTarget)
        if "annotations" in refs:
            row["annotations"] = parse_annotations(read(refs["annotations"]), sample.key)[0]
    except SampleError as e:
        row["status"], row["error"] = e.status, str(e)
    return row


def read_sam_task(task, chunk_size: int = 16, source: str = "sam-sgt") -> Iterator[dict]:
    """Reader for the runner: chunks of rows of one shard task (`task.inputs` = list of SamSample)."""
    samples, reader = task.inputs, TarReader()
    try:
        for start in range(0, len(samples), chunk_size):
            yield rows_to_batch([sam_row(s, source, reader) for s in samples[start : start + chunk_size]])
    finally:
        reader.close()

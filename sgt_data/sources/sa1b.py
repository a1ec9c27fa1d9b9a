"""Read SA-1B-layout inputs (`sa_<id>.jpg` + `sa_<id>.json`), from a folder or a tar, into rows.

Discovery is cheap and happens on the driver: it lists members and pairs them by key (for a tar, it records each
member's data offset so shard tasks seek straight to their bytes instead of rescanning the archive). Reading and
JSON parsing happen in the shard tasks, where a bad sample becomes a row with its error (nothing is dropped):
an image without JSON, a JSON without image, unparsable JSON.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sgt_data.errors import BadAnnotations, MissingPartner, SampleError

SA1B_NAME = re.compile(r"^(?P<key>sa_[^/]+?)\.(?P<ext>jpg|jpeg|json)$", re.IGNORECASE)


@dataclass(frozen=True)
class MemberRef:
    """Where one file's bytes are: a path, or (tar path, data offset, size)."""

    path: str
    offset: int = -1
    size: int = -1

    def read(self) -> bytes:
        if self.offset < 0:
            return Path(self.path).read_bytes()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass(frozen=True)
class Sa1bSample:
    key: str
    image: MemberRef | None
    annotations: MemberRef | None
    problem: str | None = None
    """Set for a file that must not be read as a sample: an unsafe tar member, a duplicate copy (an error row)."""
    status: str = "unsafe_member"
    """The error class of `problem`."""
    origin: str | None = None
    """Where a problem sample came from (its file, or its tar and member)."""


def _role(name: str) -> tuple[str, str] | None:
    """`sa_12.jpg` -> ('sa_12', 'image'); `sa_12.json` -> ('sa_12', 'json'); anything else None."""
    m = SA1B_NAME.match(Path(name).name)
    if not m:
        return None
    return m["key"], "json" if m["ext"].lower() == "json" else "image"


def _pair(entries: list[tuple[str, str, MemberRef]], rejected: list[Sa1bSample]) -> list[Sa1bSample]:
    """Pair (key, role, ref) entries by key. A second file for a role already filled (a copy in another folder or
    tar, `sa_1.JPG` beside `sa_1.jpg`) is never dropped: it becomes a `duplicate` error row of its own."""
    found: dict[str, dict[str, MemberRef]] = {}
    samples = list(rejected)
    for key, role, ref in entries:
        slot = found.setdefault(key, {})
        if role in slot:
            where = f"{ref.path}@{ref.offset}" if ref.offset >= 0 else ref.path
            first = slot[role].path
            problem = (
                f"{key}: second {role} file {where} (the first is {first}); keep one copy of each sample"
            )
            samples.append(
                Sa1bSample(
                    f"{key}#dup:{where}", None, None, problem=problem, status="duplicate", origin=where
                )
            )
        else:
            slot[role] = ref
    samples.extend(Sa1bSample(key, refs.get("image"), refs.get("json")) for key, refs in found.items())
    return sorted(samples, key=lambda s: s.key)


def _folder_entries(folder: Path) -> list[tuple[str, str, MemberRef]]:
    entries = []
    for path in sorted(folder.rglob("sa_*")):
        role = _role(path.name)
        if role and path.is_file():
            entries.append((*role, MemberRef(str(path))))
    return entries


def _tar_entries(tar_path: Path) -> tuple[list[tuple[str, str, MemberRef]], list[Sa1bSample]]:
    """A (non-compressed) tar's SA-1B members with their data offsets; unsafe members become error samples."""
    from sgt_data.sources.tar_safe import scan  # tar_safe builds on MemberRef defined here

    members, rejected = scan(tar_path)
    entries = [(*role, m.ref) for m in members if (role := _role(m.name))]
    bad = []
    for r in rejected:
        role = _role(r.name)
        key = (
            f"{role[0]}#unsafe:{Path(tar_path).name}:{r.name}" if role else f"{Path(tar_path).name}:{r.name}"
        )
        origin = f"{tar_path}:{r.name}"
        bad.append(Sa1bSample(key, None, None, problem=r.message(), status="unsafe_member", origin=origin))
    return entries, bad


def scan_folder(folder: Path) -> list[Sa1bSample]:
    return _pair(_folder_entries(folder), [])


def scan_tar(tar_path: Path) -> list[Sa1bSample]:
    return _pair(*_tar_entries(tar_path))


def discover(path: str | Path) -> list[Sa1bSample]:
    """All SA-1B samples under a folder, a tar, or a folder of tars; sorted by key for deterministic shards.

    Every file found ends as a sample: pairs by key, unsafe tar members and duplicate copies as error rows."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"{path}: no such file or folder (expected SA-1B sa_*.jpg + sa_*.json, or tars)"
        )
    if p.is_file():
        if not tarfile.is_tarfile(p):
            raise ValueError(f"{path}: not a tar; pass a folder of sa_*.jpg + sa_*.json or an SA-1B tar")
        return scan_tar(p)
    entries, rejected = _folder_entries(p), []
    for tar_path in sorted(p.rglob("*.tar")):
        more, bad = _tar_entries(tar_path)
        entries += more
        rejected += bad
    return _pair(entries, rejected)


def parse_annotations(raw: bytes, key: str) -> tuple[list[dict], int | None, int | None]:
    """SA-1B JSON -> ([{id, area, size, counts}], width, height). Raises BadAnnotations naming the sample."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadAnnotations(
            f"{key}.json: not valid JSON ({e}); re-extract the file from its SA-1B tar"
        ) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise BadAnnotations(f"{key}.json: no 'annotations' list (not an SA-1B annotation file)")
    info = doc.get("image") if isinstance(doc.get("image"), dict) else {}
    out = []
    for i, ann in enumerate(doc["annotations"]):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
            raise BadAnnotations(f"{key}.json: annotation #{i} has no segmentation {{size, counts}}")
        if not isinstance(seg["counts"], str):
            raise BadAnnotations(f"{key}.json: annotation #{i} counts is not a compressed RLE string")
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            raise BadAnnotations(f"{key}.json: annotation #{i} size {size!r} is not [height, width] integers")
        for field in ("id", "area"):
            if field in ann and not _is_int(ann[field]):
                raise BadAnnotations(f"{key}.json: annotation #{i} {field} {ann[field]!r} is not an integer")
        out.append({"id": int(ann.get("id", i)), "area": int(ann.get("area", 0)), "size": list(size),
                    "counts": seg["counts"]})  # fmt: skip
    width, height = info.get("width"), info.get("height")
    # The JSON's size is advisory (the decoded image decides); keep it only when it is a plain integer.
    return out, width if _is_int(width) else None, height if _is_int(height) else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sample_row(sample: Sa1bSample, source: str = "sa1b") -> dict:
    """One input row: image bytes + parsed annotations, or the sample's error (never raises for bad data)."""
    ref = sample.image or sample.annotations
    row = {
        "key": sample.key,
        "source": source,
        "origin": ref.path if ref else sample.origin,
        "image": None,
        "width": None,
        "height": None,
        "annotations": None,
        "sam_mask": None,
        "status": "ok",
        "error": None,
    }
    try:
        if sample.problem:
            raise SampleError(sample.problem, status=sample.status)
        if sample.image is None:
            raise MissingPartner(f"{sample.key}: annotation JSON without its image {sample.key}.jpg")
        row["image"] = sample.image.read()
        if sample.annotations is None:
            raise MissingPartner(f"{sample.key}: image without its annotation file {sample.key}.json")
        anns, width, height = parse_annotations(sample.annotations.read(), sample.key)
        row["annotations"] = anns
        row["width"], row["height"] = width, height
    except SampleError as e:
        row["status"], row["error"] = e.status, str(e)
    return row


def rows_to_batch(rows: list[dict]) -> dict[str, list]:
    if not rows:
        return {}
    return {k: [r.get(k) for r in rows] for k in rows[0]}


def read_samples(
    samples: list[Sa1bSample], chunk_size: int, source: str = "sa1b"
) -> Iterator[dict[str, list]]:
    """Chunks of rows for a shard task."""
    for start in range(0, len(samples), chunk_size):
        yield rows_to_batch([sample_row(s, source) for s in samples[start : start + chunk_size]])

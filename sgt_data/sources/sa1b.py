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

from sgt_data.errors import BadAnnotations, MissingPartner, SampleError, UnsafeMember

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
    """Set for a tar member that was rejected unread (link, device, absolute or `..` path): an error row."""


def _pair(found: dict[str, dict[str, MemberRef]]) -> list[Sa1bSample]:
    return [Sa1bSample(key, refs.get("image"), refs.get("json")) for key, refs in sorted(found.items())]


def scan_folder(folder: Path) -> list[Sa1bSample]:
    found: dict[str, dict[str, MemberRef]] = {}
    for path in sorted(folder.rglob("sa_*")):
        m = SA1B_NAME.match(path.name)
        if m and path.is_file():
            kind = "json" if m["ext"].lower() == "json" else "image"
            found.setdefault(m["key"], {})[kind] = MemberRef(str(path))
    return _pair(found)


def scan_tar(tar_path: Path) -> list[Sa1bSample]:
    """A (non-compressed) tar's SA-1B members with their data offsets; unsafe members become error samples."""
    from sgt_data.sources.tar_safe import scan  # tar_safe builds on MemberRef defined here

    members, rejected = scan(tar_path)
    found: dict[str, dict[str, MemberRef]] = {}
    for member in members:
        m = SA1B_NAME.match(Path(member.name).name)
        if m:
            kind = "json" if m["ext"].lower() == "json" else "image"
            found.setdefault(m["key"], {})[kind] = member.ref
    samples = _pair(found)
    for bad in rejected:
        m = SA1B_NAME.match(Path(bad.name).name)
        key = f"{m['key']}.{m['ext']}" if m else bad.name  # never merged with a safe sample of the same key
        samples.append(Sa1bSample(key, None, None, problem=bad.message()))
    return samples


def discover(path: str | Path) -> list[Sa1bSample]:
    """All SA-1B samples under a folder, a tar, or a folder of tars; sorted by key for deterministic shards."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"{path}: no such file or folder (expected SA-1B sa_*.jpg + sa_*.json, or tars)"
        )
    if p.is_file():
        if not tarfile.is_tarfile(p):
            raise ValueError(f"{path}: not a tar; pass a folder of sa_*.jpg + sa_*.json or an SA-1B tar")
        return scan_tar(p)
    samples = scan_folder(p)
    for tar_path in sorted(p.glob("*.tar")):
        samples.extend(scan_tar(tar_path))
    samples.sort(key=lambda s: s.key)
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(
            f"{path}: the same sample key appears more than once ({', '.join(dup)}); pass one copy"
        )
    return samples


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
    info = doc.get("image") or {}
    out = []
    for i, ann in enumerate(doc["annotations"]):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
            raise BadAnnotations(f"{key}.json: annotation #{i} has no segmentation {{size, counts}}")
        if not isinstance(seg["counts"], str):
            raise BadAnnotations(f"{key}.json: annotation #{i} counts is not a compressed RLE string")
        out.append(
            {
                "id": int(ann.get("id", i)),
                "area": int(ann.get("area", 0)),
                "size": [int(v) for v in seg["size"]],
                "counts": seg["counts"],
            }
        )
    return out, info.get("width"), info.get("height")


def sample_row(sample: Sa1bSample, source: str = "sa1b") -> dict:
    """One input row: image bytes + parsed annotations, or the sample's error (never raises for bad data)."""
    ref = sample.image or sample.annotations
    row = {
        "key": sample.key,
        "source": source,
        "origin": ref.path if ref else None,
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
            raise UnsafeMember(sample.problem)
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

"""SAM-SGT-shaped tar shards made from an SA-1B-format sample folder (the bundled `examples/sa1b`).

`make_sam_files(sample_dir, work_dir, masks="inline"|"separate")` returns `{repo path: local file}` ready for
`hub_repo.build_repo`: `sam_selection/sam_selection-0000N.tar` holding `sam_selection/sa_<id>.jpg` (and, inline,
`sam_mask/sa_<id>.png`), or separate `sam_mask/sam_mask-0000N.tar` shards, plus `file_names/sam_190k_new.txt`.
Masks are colour-per-instance PNGs painted from the sample's RLE (largest first, seeded colours).
`add_members(tar, {...})` appends crafted members (links, `..` names, devices) for the safety tests.
"""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path


def colour_mask(annotation_json: Path) -> bytes:
    """PNG of the instances in an SA-1B JSON: each mask its own colour, larger masks painted first."""
    import cv2
    import numpy as np
    from pycocotools import mask as mask_utils

    doc = json.loads(annotation_json.read_text())
    h, w = doc["image"]["height"], doc["image"]["width"]
    rgb = np.zeros((h, w, 3), np.uint8)
    rng = np.random.default_rng(int(doc["image"]["image_id"]))
    for ann in sorted(doc["annotations"], key=lambda a: -a["area"]):
        seg = ann["segmentation"]
        with warnings.catch_warnings():  # pycocotools vs numpy 2 copy-keyword deprecation, harmless
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode([{"size": seg["size"], "counts": seg["counts"].encode()}])[:, :, 0]
        m = m.astype(bool)
        rgb[m] = rng.integers(1, 256, 3)
    ok, png = cv2.imencode(".png", rgb)
    assert ok
    return png.tobytes()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def make_sam_files(
    sample_dir: Path, work_dir: Path, per_shard: int = 4, masks: str = "inline"
) -> dict[str, Path]:
    """Write SAM-SGT tars for the sample (shards numbered from 1); returns {repo path: local file}."""
    images = sorted(Path(sample_dir).glob("sa_*.jpg"), key=lambda p: int(p.stem[3:]))
    work_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for n, start in enumerate(range(0, len(images), per_shard), start=1):
        group = images[start : start + per_shard]
        img_rel = f"sam_selection/sam_selection-{n:05d}.tar"
        mask_rel = f"sam_mask/sam_mask-{n:05d}.tar"
        img_tar = work_dir / Path(img_rel).name
        mask_tar = work_dir / Path(mask_rel).name
        with tarfile.open(img_tar, "w", format=tarfile.PAX_FORMAT) as ti:
            tm = ti if masks == "inline" else tarfile.open(mask_tar, "w", format=tarfile.PAX_FORMAT)
            for img in group:
                _add(ti, f"sam_selection/{img.name}", img.read_bytes())
                _add(tm, f"sam_mask/{img.stem}.png", colour_mask(img.with_suffix(".json")))
            if tm is not ti:
                tm.close()
                files[mask_rel] = mask_tar
        files[img_rel] = img_tar
    listing = work_dir / "sam_190k_new.txt"
    listing.write_text("".join(f"sam_selection/{p.name}\n" for p in images))
    files["file_names/sam_190k_new.txt"] = listing
    return files


def add_members(tar_path: Path, crafted: dict[str, tuple[str, bytes | str]]) -> None:
    """Append members to a tar: {name: ("file", bytes) | ("symlink", target) | ("hardlink", target) | ("device", "")}."""
    with tarfile.open(tar_path, "a") as tar:
        for name, (kind, payload) in crafted.items():
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}[
                kind
            ]
            info.linkname = payload if isinstance(payload, str) else ""
            tar.addfile(info)

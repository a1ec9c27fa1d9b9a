"""Repack a wheel without the parts a headless worker never loads, so it fits the device machine's 64 MiB carry.

Ray's manylinux wheel is ~79 MB, mostly Java jars, dashboard source maps and bundled web assets. This drops files
whose path matches a pattern, rewrites RECORD with fresh hashes for what stays, and writes a new wheel with the
same name. Usage: python slim_wheel.py IN.whl OUT_DIR [pattern ...] (fnmatch patterns; defaults below).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import sys
import zipfile
from pathlib import Path

DEFAULT_DROP = [
    "ray/jars/*",
    "*.map",
    "ray/dashboard/client/build/*",
    "ray/rllib/*",
    "ray/tune/*",
    "ray/train/*",
]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim(src: Path, out_dir: Path, drop: list[str]) -> Path:
    """Write `out_dir/<same name>` without members matching `drop`; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / src.name
    with (
        zipfile.ZipFile(src) as zin,
        zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zout,
    ):
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in zin.infolist():
            if info.filename == record_name or any(fnmatch.fnmatch(info.filename, p) for p in drop):
                continue
            data = zin.read(info)
            zout.writestr(info, data)
            lines.append(_record_line(info.filename, data))
        lines.append(f"{record_name},,")
        zout.writestr(record_name, "\n".join(lines) + "\n")
    return dst


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path = slim(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:] or DEFAULT_DROP)
    print(f"{path} {path.stat().st_size / 2**20:.1f} MiB")

"""Safe access to tar members without extracting anything to disk.

A tar from the network is untrusted: a member may be named `/etc/x`, `../../x`, be a symlink or hardlink to
another file, a device or a FIFO. Extracting such an archive can write outside the output folder. We never
extract: `scan` reads only the headers (seeking over the data) and returns, for each regular member with a
clean relative name, where its bytes are (`MemberRef`: tar path, data offset, size); every other member comes back
as a `Rejected` entry with the reason, so callers report it instead of silently dropping it. Readers then fetch
member bytes by offset, which is a plain sequential read of the one tar.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sgt_data.sources.sa1b import MemberRef


@dataclass(frozen=True)
class Member:
    """A safe regular member: its normalised name and where its bytes are."""

    name: str
    ref: MemberRef


@dataclass(frozen=True)
class Rejected:
    """A member that was not read, and why (for error rows and the run summary)."""

    tar: str
    name: str
    reason: str

    def message(self) -> str:
        return (
            f"{Path(self.tar).name} member {self.name!r}: {self.reason}; rejected and not read. The archive is "
            "damaged or malicious: re-download it (or remove the member) if this sample matters"
        )


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why `info` must not be read as a file, or None when it is a safe regular member."""
    name = info.name
    if info.issym():
        return f"symbolic link to {info.linkname!r}"
    if info.islnk():
        return f"hard link to {info.linkname!r}"
    if info.ischr() or info.isblk():
        return "device file"
    if info.isfifo():
        return "FIFO"
    if not info.isreg():
        return f"not a regular file (tar type {info.type!r})"
    if not name or "\0" in name or any(ord(c) < 32 for c in name):
        return "empty name or control characters in the name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "path climbs out of the archive (..)"
    return None


def normalise(name: str) -> str:
    """`./a//b` -> `a/b` (only for names that passed `member_problem`)."""
    return "/".join(p for p in name.split("/") if p not in (".", ""))


def _entries(tar: tarfile.TarFile, tar_path: str) -> Iterator[Member | Rejected]:
    for info in tar:
        if info.isdir():
            continue  # folders carry no data; a rogue folder name cannot write anything since we never extract
        problem = member_problem(info)
        if problem:
            yield Rejected(tar_path, info.name, problem)
        else:
            yield Member(normalise(info.name), MemberRef(tar_path, info.offset_data, info.size))


def scan(tar_path: str | Path) -> tuple[list[Member], list[Rejected]]:
    """Headers of an uncompressed tar on disk: safe members with data offsets, and rejected members."""
    members: list[Member] = []
    rejected: list[Rejected] = []
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for entry in _entries(tar, str(tar_path)):
                (members if isinstance(entry, Member) else rejected).append(entry)
    except tarfile.TarError as e:
        raise ValueError(f"{tar_path}: not a readable uncompressed tar ({e}); re-download it") from e
    return members, rejected


def stream(fileobj: BinaryIO, label: str = "<stream>") -> Iterator[tuple[str, bytes] | Rejected]:
    """Members of a tar read strictly front to back (a pipe or socket): (name, bytes) or Rejected.

    For sources that cannot seek; bytes are read member by member, never written anywhere."""
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if info.isdir():
                continue
            problem = member_problem(info)
            if problem:
                yield Rejected(label, info.name, problem)
                continue
            handle = tar.extractfile(info)
            yield normalise(info.name), handle.read() if handle else b""

"""Find bundled pipeline specs and recipes by name or path.

`pipelines/` and `recipes/` are data. In a source checkout they sit at the repository root; in an installed
wheel they are shipped as `sgt_data/_bundled/{pipelines,recipes}`. `resolve("recipes", "bagel_tiny")` finds
either copy; an existing path is used as is.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("pipelines", "recipes")


def bundled_dirs(kind: str) -> list[Path]:
    """Folders that may hold bundled specs of `kind`, checkout copy first (so edits in a checkout win)."""
    if kind not in KINDS:
        raise ValueError(f"unknown spec kind {kind!r}: choose one of {KINDS}")
    package = Path(__file__).resolve().parent
    return [d for d in (package.parent / kind, package / "_bundled" / kind) if d.is_dir()]


def available(kind: str) -> list[str]:
    """Names (file stems) of the bundled specs of `kind`, sorted."""
    names = {p.stem for d in bundled_dirs(kind) for p in d.glob("*.yaml")}
    return sorted(names)


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """A path that exists, or a bundled spec named `name_or_path` (with or without `.yaml`)."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    # A path (not a bare name or `recipes/NAME.yaml` as the docs write it) that does not exist is an error: a
    # typo must not silently fall back to the bundled copy of the same name.
    if len(candidate.parts) > 1 and candidate.parts[-2:-1] != (kind,):
        raise FileNotFoundError(f"{kind[:-1]} file {str(name_or_path)!r} does not exist")
    stem = candidate.name.removesuffix(".yaml")
    for folder in bundled_dirs(kind):
        path = folder / f"{stem}.yaml"
        if path.is_file():
            return path
    names = ", ".join(available(kind)) or "none"
    raise FileNotFoundError(
        f"no {kind[:-1]} {str(name_or_path)!r}: not a file, and not a bundled name ({names})"
    )

"""`sgt-data train RECIPE [key=value ...]`, plus `train ls`, `train cp NAME DEST`, `train validate FILE`.

Multi-GPU: `accelerate launch --num_processes 8 -m sgt_data.cli train RECIPE ...`. torch and accelerate are
imported only when a run starts, so `--help`, `ls`, `cp` and `validate` stay instant.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from sgt_data import specs
from sgt_data.config import ConfigError

ACTIONS = ("ls", "cp", "validate")
USAGE = """examples:
  sgt-data train ls                                   bundled recipes
  sgt-data train cp bagel_sgt my_recipe.yaml          copy one to edit
  sgt-data train validate my_recipe.yaml optim.lr=2e-5
  sgt-data train bagel_tiny train.max_steps=8         train (a bundled name or a path)
  accelerate launch --num_processes 8 -m sgt_data.cli train bagel_sgt
"""


def _fields_help() -> str:
    from sgt_data.train.recipe import describe

    lines = ["recipe fields (YAML keys; override any with key=value):"]
    for key, default, doc in describe():
        lines.append(f"  {key} = {default}")
        if doc:
            lines.append(f"      {doc}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `train`'s arguments; the epilog documents every recipe field."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = USAGE + "\n" + _fields_help()
    parser.add_argument("recipe", help="recipe name or path, or one of: ls, cp NAME DEST, validate FILE")
    parser.add_argument("rest", nargs="*", help="key=value overrides (or the arguments of cp / validate)")
    parser.add_argument("--schema-only", action="store_true", help="validate: skip the filesystem checks")
    parser.add_argument("--force", action="store_true", help="cp: overwrite DEST")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")


def header(path: Path) -> str:
    """First line of a recipe's opening comment (its purpose), for `train ls`."""
    for line in path.read_text().splitlines():
        text = line.lstrip("# ").strip()
        if line.startswith("#") and text:
            # "bagel_tiny — BAGEL on a laptop" -> "BAGEL on a laptop" (the name is already in the listing)
            return text.removeprefix(path.stem).lstrip(" —-:")
    return ""


def cmd_ls() -> int:
    """List bundled recipes with their purpose line."""
    names = specs.available("recipes")
    if not names:
        print("no bundled recipes found")
        return 1
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {header(specs.resolve('recipes', name))}")
    return 0


def cmd_cp(rest: list[str], force: bool) -> int:
    """Copy a bundled recipe to DEST (a file, or a folder to copy into)."""
    if len(rest) != 2:
        print("usage: sgt-data train cp NAME DEST", file=sys.stderr)
        return 2
    src = specs.resolve("recipes", rest[0])
    dest = Path(rest[1])
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not force:
        print(f"{dest} exists; pass --force to overwrite", file=sys.stderr)
        return 1
    shutil.copyfile(src, dest)
    print(f"copied {src} -> {dest}")
    return 0


def cmd_validate(rest: list[str], schema_only: bool) -> int:
    """Check a recipe (schema, cross-field rules and, unless --schema-only, paths); list every problem."""
    from sgt_data.train.recipe import load_recipe, preflight

    if not rest:
        print("usage: sgt-data train validate FILE [key=value ...]", file=sys.stderr)
        return 2
    path = specs.resolve("recipes", rest[0])
    try:
        recipe = load_recipe(path, rest[1:])
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    problems = [] if schema_only else preflight(recipe)
    if problems:
        print(ConfigError(str(path), problems), file=sys.stderr)
        return 1
    print(
        f"ok: {path} (model {recipe.model.name}, per step {recipe.task_counts()}, {recipe.train.max_steps} steps)"
    )
    return 0


def cmd_train(name: str, overrides: list[str]) -> int:
    """Load the recipe and run the loop."""
    from sgt_data.train.loop import train
    from sgt_data.train.recipe import load_recipe

    try:
        recipe = load_recipe(specs.resolve("recipes", name), overrides)
        out = train(recipe)
    except (ConfigError, FileExistsError, FileNotFoundError) as err:
        print(f"sgt-data train: {err}", file=sys.stderr)
        return 2
    print(f"done: {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to ls / cp / validate or train."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    if args.recipe == "ls":
        return cmd_ls()
    if args.recipe == "cp":
        return cmd_cp(args.rest, args.force)
    if args.recipe == "validate":
        return cmd_validate(args.rest, args.schema_only)
    return cmd_train(args.recipe, args.rest)

"""`sgt-data` command line: a thin dispatcher over command modules.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`; the module is
imported only when its command is chosen, so `sgt-data --help` is instant and a command never pays for another's
imports. Command modules keep heavy imports (torch, ray, datasets, huggingface_hub) inside functions.

The Hub endpoint must be fixed before `huggingface_hub` or `datasets` is first imported (both read `HF_ENDPOINT`
and `HF_HUB_DISABLE_XET` at import): `_configure_hub_env` does that here, from `--endpoint` / `--mirror`, before a
command runs. Library code additionally passes `endpoint=` explicitly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sgt_data.errors import PlanChanged

MIRROR_ENDPOINT = "https://hf-mirror.com"

# (words, module, one-line help). Order is the order `--help` shows.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("build", "sam"), "sgt_data.sources.sam", "SAM-SGT (Hub) or raw SA-1B (--from) -> canonical shards"),
    (("build", "proxies"), "sgt_data.proxies.build", "canonical shards / SA-1B -> seg, edge, depth targets"),
    (("build", "llava-ov"), "sgt_data.sources.llava_ov", "seeded LLaVA-OneVision subsample -> VQA shards"),
    (("push",), "sgt_data.push", "upload a built dataset + generated card to the Hub"),
    (("train",), "sgt_data.train.cli", "train BAGEL or OmniGen2 from a recipe (`train ls|cp|validate`)"),
    (("infer",), "sgt_data.infer", "und / t2i / seg inference with a base or fine-tuned checkpoint"),
    (("show",), "sgt_data.preview", "contact sheet PNG + per-level stats of a built folder"),
    (("validate",), "sgt_data.validate", "schema, completion markers and counts-in == counts-out check"),
]


def _usage() -> str:
    width = max(len(" ".join(words)) for words, _, _ in COMMANDS)
    rows = "\n".join(f"  {' '.join(words):<{width}}  {text}" for words, _, text in COMMANDS)
    return (
        "usage: sgt-data COMMAND [options]   (sgt-data COMMAND --help for its options)\n\n"
        "Build SGT proxy datasets, push them to the Hub, train and run BAGEL / OmniGen2.\n\n"
        f"commands:\n{rows}\n"
    )


def _find_command(argv: list[str]) -> tuple[tuple[str, ...], str, str] | None:
    for entry in COMMANDS:
        words = entry[0]
        if tuple(argv[: len(words)]) == words:
            return entry
    return None


def _configure_hub_env(args: argparse.Namespace) -> None:
    """Set the Hub endpoint variables before any HF import; Xet stays off for every non-default endpoint."""
    endpoint = getattr(args, "endpoint", None)
    if getattr(args, "mirror", False):
        if endpoint and endpoint != MIRROR_ENDPOINT:
            raise SystemExit("sgt-data: --mirror and --endpoint name different endpoints; pass only one")
        endpoint = MIRROR_ENDPOINT
        args.endpoint = endpoint
    if endpoint:
        already = [m for m in ("huggingface_hub", "datasets") if m in sys.modules]
        if already and os.environ.get("HF_ENDPOINT") != endpoint:
            # Only reachable when main() is called in-process after an HF import (tests); code passes
            # `endpoint=` explicitly as well, so this is a belt-and-braces warning, not a silent failure.
            print(
                f"sgt-data: note: {', '.join(already)} already imported; endpoint passed explicitly",
                file=sys.stderr,
            )
        os.environ["HF_ENDPOINT"] = endpoint.rstrip("/")
        os.environ["HF_HUB_DISABLE_XET"] = "1"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sgt-data` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(), end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from sgt_data import __version__

        print(f"sgt-data {__version__}")
        return 0
    entry = _find_command(argv)
    if entry is None:
        print(f"sgt-data: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr, end="")
        return 2
    words, module_name, text = entry
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog="sgt-data " + " ".join(words), description=text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[len(words) :])
    args.argv = ["sgt-data", *argv]  # the exact command, recorded in manifests and dataset cards
    _configure_hub_env(args)
    if getattr(module, "HUB_DISABLE_XET", False):
        os.environ["HF_HUB_DISABLE_XET"] = "1"  # e.g. push: classic LFS uploads, whatever the endpoint
    try:
        return int(module.run(args) or 0)
    except PlanChanged as e:
        print(f"sgt-data {' '.join(words)}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sgt-data: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

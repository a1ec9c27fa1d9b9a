"""Packaging: the wheel ships pipelines/ and recipes/; `sgt-data --help` is instant (no heavy imports)."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile

import pytest
from conftest import REPO


@pytest.mark.integration
def test_wheel_bundles_pipelines_and_recipes(tmp_path):
    pytest.importorskip("hatchling")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("sgt_data-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for spec in sorted((REPO / "pipelines").glob("*.yaml")):
        assert f"sgt_data/_bundled/pipelines/{spec.name}" in names
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        assert f"sgt_data/_bundled/recipes/{recipe.name}" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_help_is_instant_and_imports_nothing_heavy():
    code = (
        "import sys, time; t = time.perf_counter(); from sgt_data.cli import main; main(['--help']); "
        "heavy = [m for m in ('torch', 'ray', 'datasets', 'transformers', 'huggingface_hub') if m in sys.modules]; "
        "print(heavy, time.perf_counter() - t)"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    heavy, seconds = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert heavy == "[]", f"--help imported {heavy}"
    assert float(seconds) < 0.5 and time.perf_counter() - started < 10


def test_unknown_command_and_subcommand_help():
    from sgt_data.cli import main

    assert main(["frobnicate"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "proxies", "--help"])
    assert exit_info.value.code == 0

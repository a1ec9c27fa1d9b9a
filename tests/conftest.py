"""Shared test fixtures: one local Ray per session (on loopback), the bundled sample, parity fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray reads these at init: keep the test cluster on 127.0.0.1 and without an auth token file.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PARITY = REPO.parent / "shared" / "parity"


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance started once for the whole test session (init costs seconds, not per test)."""
    import logging

    import ray

    # Workers must import test modules too (readers and steps defined in a test are pickled by reference).
    tests_dir = str(Path(__file__).resolve().parent)
    paths = [tests_dir, str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sa1b_sample() -> Path:
    """The bundled SA-1B-format sample (examples/sa1b)."""
    path = EXAMPLES / "sa1b"
    if not any(path.glob("sa_*.jpg")):
        pytest.skip("examples/sa1b is not built yet (run examples/make_sample.py)")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """`../shared/parity` beside the checkout; tests that need it skip with the reason when it is absent."""
    if not PARITY.is_dir():
        pytest.skip(f"parity fixtures not found at {PARITY} (they ship in the project's shared/ folder)")
    return PARITY

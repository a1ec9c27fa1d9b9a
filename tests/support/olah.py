"""Start and stop olah (a Hub-compatible mirror server) on 127.0.0.1 in offline mode, for tests.

olah lives in its own virtualenv (`.venv-olah` at the repository root; its dependencies would downgrade packages
our venv pins). `find_olah_cli()` looks at `$SGT_OLAH_CLI`, then `.venv-olah/bin/olah-cli`, then `PATH`.
Every wait is bounded; the server is stopped by its own PID (terminate, then kill after a grace period).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


def find_olah_cli() -> str | None:
    """Path of the `olah-cli` executable, or None when olah is not installed."""
    env = os.environ.get("SGT_OLAH_CLI")
    if env:
        return env if Path(env).is_file() else None
    local = REPO_ROOT / ".venv-olah" / "bin" / "olah-cli"
    if local.is_file():
        return str(local)
    return shutil.which("olah-cli")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OlahServer:
    url: str
    port: int
    workdir: Path
    process: subprocess.Popen

    @property
    def log_file(self) -> Path:
        return self.workdir / "olah.out"

    def access_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request olah has logged so far (uvicorn's access lines)."""
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return [(m["method"], m["path"], int(m["status"])) for m in _ACCESS_LINE.finditer(text)]

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=grace)


def write_config(path: Path, port: int, mirrors_path: Path, repos_path: Path) -> None:
    """olah TOML: loopback only, offline (never contacts huggingface.co), serving local mirrors."""
    path.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f'repos-path = "{repos_path}"\n'
        f'mirrors-path = ["{mirrors_path}"]\n'
        "\n[accessibility]\n"
        "offline = true\n"
    )


def _wait_ready(server: OlahServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    probe = f"{server.url}/api/whoami-v2"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"olah exited with {server.process.returncode}; see {server.log_file}")
        try:
            with urllib.request.urlopen(probe, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"olah did not answer on {server.url} within {timeout:.0f}s; see {server.log_file}")


def start_olah(mirrors_path: str | Path, workdir: str | Path, timeout: float = 60.0) -> OlahServer:
    """Start olah serving `mirrors_path` on a free loopback port; its files and log go to `workdir`."""
    cli = find_olah_cli()
    if cli is None:
        raise FileNotFoundError(
            "olah-cli not found: python -m venv .venv-olah && .venv-olah/bin/pip install olah==0.5.4 "
            "(or set SGT_OLAH_CLI)"
        )
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = work / "olah.toml"
    write_config(config, port, Path(mirrors_path).resolve(), (work / "repos").resolve())
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(work / "olah.out", "ab") as log:
        proc = subprocess.Popen(
            [
                cli,
                "-c",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-path",
                str(work / "logs"),
            ],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    server = OlahServer(f"http://127.0.0.1:{port}", port, work, proc)
    _wait_ready(server, timeout)
    return server


@contextmanager
def running_olah(
    mirrors_path: str | Path, workdir: str | Path, timeout: float = 60.0
) -> Iterator[OlahServer]:
    """`start_olah` as a context manager that always stops the server."""
    server = start_olah(mirrors_path, workdir, timeout)
    try:
        yield server
    finally:
        server.stop()

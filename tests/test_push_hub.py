"""End-to-end `sgt-data push` against the strict fake Hub (tests/fake_hub.py), through the real CLI and client.

Each push runs as a subprocess of `.venv/bin/sgt-data` so `HF_ENDPOINT` / `HF_HUB_DISABLE_XET` are set before the
first Hub import, exactly as for a user; reading back uses `datasets.load_dataset` in a subprocess for the same
reason. Every request loop is bounded by the CLI's retry limits and by subprocess timeouts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_hub import FakeHub
from support.built import make_folder

from sgt_data import shards

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / ".venv" / "bin" / "sgt-data"
TOKEN = "hf_PushTestTokenMustNeverLeak42abc"
REPO_ID = "sgt-org/proxies"

LOAD = """
import json, sys, datasets, pyarrow.parquet as pq
repo, out, configs = sys.argv[1], sys.argv[2], sys.argv[3:]
features = {}
for config in configs:
    ds = datasets.load_dataset(repo, config, split="train")
    features[config] = {n: type(f).__name__ for n, f in ds.features.items()}
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    pq.write_table(ds.with_format("arrow")[:], f"{out}/{config}.parquet")
print(json.dumps(features))
"""


def _env(tmp: Path, hub: FakeHub, token: str = TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_TOKEN=token, HF_HOME=str(tmp / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    return env


def run_push(folder: Path, hub: FakeHub, *extra: str, token: str = TOKEN) -> subprocess.CompletedProcess:
    argv = [
        str(CLI),
        "push",
        str(folder),
        "--repo-id",
        REPO_ID,
        "--endpoint",
        hub.url,
        "--retry-wait",
        "0.05",
    ]
    return subprocess.run(
        argv + list(extra), env=_env(folder.parent, hub, token), capture_output=True, text=True, timeout=180
    )


def load_back(tmp: Path, hub: FakeHub, *configs: str) -> tuple[dict[str, pa.Table], dict]:
    """`datasets.load_dataset(REPO_ID, config)` for each config, in one subprocess pointed at the fake Hub."""
    out = tmp / "loaded"
    out.mkdir(exist_ok=True)
    env = dict(_env(tmp, hub), HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1")
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, REPO_ID, str(out), *configs],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = {c: pq.read_table(out / f"{c}.parquet") for c in configs}
    return tables, json.loads(proc.stdout.strip().splitlines()[-1])


def local_table(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in shards.list_shards(folder)])


def remote_files(hub: FakeHub) -> dict:
    return hub.repos[("dataset", REPO_ID)].commits[-1][2]


def lfs_oids(folder: Path) -> dict[str, str]:
    from sgt_data.push import sha256_file

    return {p.name: sha256_file(p) for p in shards.list_shards(folder)}


@pytest.fixture
def hub():
    with FakeHub(token=TOKEN) as server:
        yield server
    assert not server.unknown_routes, server.unknown_routes


def test_round_trip_and_rerun_skips(tmp_path: Path, hub: FakeHub):
    folder = make_folder(tmp_path / "built", shard_rows=(5, 4, 3))
    first = run_push(folder, hub)
    assert first.returncode == 0, first.stderr
    files = remote_files(hub)
    assert sorted(files) == [
        "README.md",
        "data/shard-00000.parquet",
        "data/shard-00001.parquet",
        "data/shard-00002.parquet",
        "manifest.json",
    ]
    assert all(files[f"data/{name}"].sha256 == oid for name, oid in lfs_oids(folder).items())
    assert hub.repos[("dataset", REPO_ID)].private
    assert json.loads(files["manifest.json"].content) == shards.read_manifest(folder)

    tables, features = load_back(tmp_path, hub, "all", "seg")
    assert tables["all"].to_pylist() == local_table(folder).to_pylist()
    assert features["all"]["image"] == "Image" and features["all"]["seg"] == "Image"
    seg = tables["seg"]
    local = local_table(folder).filter(pa.compute.equal(local_table(folder)["status"], "ok"))
    assert seg.column_names == [
        "key",
        "source",
        "image",
        "width",
        "height",
        "seg",
        "prompt_seg",
        "status",
        "error",
    ]
    assert seg.to_pylist() == local.select(seg.column_names).to_pylist()

    puts, commits = len(hub.puts), len(hub.repos[("dataset", REPO_ID)].commits)
    again = run_push(folder, hub)
    assert again.returncode == 0, again.stderr
    assert len(hub.puts) == puts and len(hub.repos[("dataset", REPO_ID)].commits) == commits
    assert "0 sent, 3 already on the Hub" in again.stdout


def test_commits_in_chunks(tmp_path: Path, hub: FakeHub):
    folder = make_folder(tmp_path / "built", shard_rows=(2, 2, 2, 2, 2))
    proc = run_push(folder, hub, "--files-per-commit", "2")
    assert proc.returncode == 0, proc.stderr
    titles = [title for _, title, _ in hub.repos[("dataset", REPO_ID)].commits[1:]]
    assert titles == [
        "Add shard-00000.parquet..shard-00001.parquet (1/3)",
        "Add shard-00002.parquet..shard-00003.parquet (2/3)",
        "Add shard-00004.parquet..shard-00004.parquet (3/3)",
        "Update dataset card and manifest",
    ]


def test_dropped_connection_mid_upload_is_retried(tmp_path: Path, hub: FakeHub):
    folder = make_folder(tmp_path / "built", shard_rows=(4, 4, 4))
    hub.put_faults = ["pass", "drop"]
    proc = run_push(folder, hub, "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(hub.puts) == sorted(lfs_oids(folder).values())  # every object stored exactly once
    assert sum(1 for method, _ in hub.log if method == "PUT") == 4  # 3 files + 1 resend of the dropped one


def test_stalled_upload_times_out_and_is_retried(tmp_path: Path, hub: FakeHub):
    folder = make_folder(tmp_path / "built", shard_rows=(4, 4))
    hub.block_timeout = 90  # the server goes silent mid-body for longer than the test allows
    hub.put_faults = ["block"]
    started = time.monotonic()
    proc = run_push(folder, hub, "--timeout", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 45, "a silent connection held the push"
    assert sorted(hub.puts) == sorted(lfs_oids(folder).values())


def test_killed_push_resumes_without_resending(tmp_path: Path, hub: FakeHub):
    folder = make_folder(tmp_path / "built", shard_rows=(3, 3, 3, 3))
    oids = lfs_oids(folder)
    hub.put_faults = ["pass", "pass", "pass", "block"]  # chunk 1 committed; chunk 2: one stored, one cut
    argv = [str(CLI), "push", str(folder), "--repo-id", REPO_ID, "--endpoint", hub.url]
    argv += ["--files-per-commit", "2", "--threads", "1"]
    proc = subprocess.Popen(argv, env=_env(tmp_path, hub), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert hub.blocked.wait(120), "the push never reached the 4th upload"
    finally:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        hub.release.set()
    assert TOKEN.encode() not in out + err
    assert sorted(remote_files(hub)) == ["data/shard-00000.parquet", "data/shard-00001.parquet"]
    stored_before = list(hub.puts)

    resumed = run_push(folder, hub, "--files-per-commit", "2", "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert hub.puts[len(stored_before) :] == [oids["shard-00003.parquet"]]  # only the cut file is sent again
    assert "0 sent, 2 already on the Hub" in resumed.stdout
    assert {f"data/{n}" for n in oids} <= set(remote_files(hub))


def test_server_errors_are_retried_with_backoff(tmp_path: Path, hub: FakeHub):
    folder = make_folder(tmp_path / "built")
    hub.fail_routes = {"commit": 2, "create": 1, "paths_info": 1}
    proc = run_push(folder, hub)
    assert proc.returncode == 0, proc.stderr
    assert "retry 1/5" in proc.stderr and "retry 2/5" in proc.stderr
    assert len(hub.repos[("dataset", REPO_ID)].commits) == 3  # initial + shards + card: no duplicate commit


def test_partial_build_is_refused_unless_allowed(tmp_path: Path, hub: FakeHub):
    folder = make_folder(tmp_path / "built")
    (folder / "completions" / "shard-00001").unlink()
    refused = run_push(folder, hub)
    assert refused.returncode == 1 and "--allow-partial" in refused.stderr
    assert "shard-00001.parquet has no completion marker" in refused.stderr
    assert ("POST", "/api/repos/create") not in hub.log
    allowed = run_push(folder, hub, "--allow-partial", "--public")
    assert allowed.returncode == 0, allowed.stderr
    files = remote_files(hub)
    assert "data/shard-00001.parquet" not in files and "data/shard-00000.parquet" in files
    assert "data/shard-00001.parquet" not in files["README.md"].content.decode()
    assert not hub.repos[("dataset", REPO_ID)].private
    assert "note:" not in allowed.stderr
    (folder / "completions" / "shard-00001").write_text('{"rows": 4}')
    assert run_push(folder, hub).returncode == 0
    (folder / "completions" / "shard-00001").unlink()  # the remote now holds a shard this build lacks
    shrunk = run_push(folder, hub, "--allow-partial")
    assert shrunk.returncode == 0 and "1 shard(s) on the Hub are not in this build" in shrunk.stderr
    assert "data/shard-00001.parquet" not in remote_files(hub)["README.md"].content.decode()


def test_token_never_appears_anywhere(tmp_path: Path, hub: FakeHub):
    folder = make_folder(tmp_path / "built")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["command"] = [*manifest["command"], "--note", TOKEN]  # a user pasted it into a build argument
    (folder / "manifest.json").write_text(json.dumps(manifest))
    outputs = []
    wrong = "hf_WrongTokenAlsoSecret9876543210zz"
    denied = run_push(folder, hub, token=wrong)
    assert denied.returncode == 1 and "401" in denied.stderr
    outputs += [denied.stdout, denied.stderr]
    ok = run_push(folder, hub)
    assert ok.returncode == 0, ok.stderr
    outputs += [ok.stdout, ok.stderr]
    assert "token appeared in the card/manifest and was removed" in ok.stderr
    stored = [e.content for e in remote_files(hub).values() if e.content is not None] + list(hub.lfs.values())
    local = [p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"]
    for secret in (TOKEN, wrong):
        assert all(secret not in text for text in outputs)
        assert all(secret.encode() not in blob for blob in stored + local)


def make_vqa_folder(out: Path) -> Path:
    """A small `build llava-ov`-shaped folder: two categories, one row without an image."""
    from support.built import png as _png

    cats = ["General VQA", "Math/Reasoning", "General VQA", "Math/Reasoning", "General VQA"]
    rows = {
        "key": [f"q{i}" for i in range(5)],
        "source": ["vqav2", "geo170k", "vqav2", "geo170k", "vqav2"],
        "category": cats,
        "origin": [f"row-{i}" for i in range(5)],
        "image": [_png(i) for i in range(4)] + [None],
        "conversations": [
            [{"from": "human", "value": f"<image>\nQ{i}?"}, {"from": "gpt", "value": f"A{i}"}]
            for i in range(5)
        ],
        "status": ["ok"] * 5,
        "error": [None] * 5,
    }
    shards.finish_shard(out, 0, shards.to_table(rows, shards.VQA_COLUMNS))
    shards.write_manifest(out, kind="vqa", command=["sgt-data", "build", "llava-ov"], inputs_total=5)
    return out


def test_vqa_round_trip_per_category_config(tmp_path: Path, hub: FakeHub):
    folder = make_vqa_folder(tmp_path / "vqa")
    proc = run_push(folder, hub)
    assert proc.returncode == 0, proc.stderr
    tables, features = load_back(tmp_path, hub, "all", "math_reasoning")
    assert tables["all"].to_pylist() == local_table(folder).to_pylist()
    assert features["all"]["image"] == "Image" and features["all"]["conversations"] == "List"
    assert tables["math_reasoning"].column("key").to_pylist() == ["q1", "q3"]


PEAK = (
    "import re, sys\nfrom sgt_data.cli import main\nrc = main(sys.argv[1:])\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "print(f'PEAK_KB {hwm}', file=sys.stderr)\nsys.exit(rc)\n"
)


def push_peak_mb(folder: Path, hub: FakeHub) -> float:
    """Peak resident memory (VmHWM, reset at exec) of one `sgt-data push` process, in MiB."""
    argv = [sys.executable, "-c", PEAK, "push", str(folder), "--repo-id", f"{REPO_ID}-{folder.name}"]
    argv += ["--endpoint", hub.url, "--threads", "2"]
    proc = subprocess.run(argv, env=_env(folder.parent, hub), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stderr.rsplit("PEAK_KB ", 1)[1].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for peak memory")
def test_memory_does_not_grow_with_shard_bytes(tmp_path: Path, hub: FakeHub):
    def folder(name: str, shard_mb: int, count: int) -> Path:
        out = tmp_path / name
        for i in range(count):
            rows = {
                "key": [f"k{i}"],
                "source": ["sa1b"],
                "image": [os.urandom(shard_mb << 20)],
                "status": ["ok"],
            }
            shards.finish_shard(out, i, shards.to_table(rows, shards.sample_columns(())))
        shards.write_manifest(out, kind="proxies", levels=[])
        return out

    small = push_peak_mb(folder("small", 1, 1), hub)
    big = push_peak_mb(folder("big", 64, 2), hub)  # 128 MiB of incompressible shards
    assert big - small < 48, f"peak {big:.0f} MiB vs {small:.0f} MiB for a tiny push: shard bytes are held"


def test_build_validate_push_load(tmp_path: Path, hub: FakeHub, sa1b_sample: Path):
    """The user's path: `build proxies` on the bundled sample, then push, then `load_dataset` the seg config."""
    out = tmp_path / "proxies"
    argv = [
        str(CLI),
        "build",
        "proxies",
        "--level",
        "seg,edge",
        "--input",
        str(sa1b_sample),
        "--output",
        str(out),
    ]
    build = subprocess.run(
        argv + ["--executor", "local", "--no-progress"], capture_output=True, text=True, timeout=300
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert subprocess.run([str(CLI), "validate", str(out)], capture_output=True, timeout=120).returncode == 0
    proc = run_push(out, hub)
    assert proc.returncode == 0, proc.stderr
    card = remote_files(hub)["README.md"].content.decode()
    assert "sgt-data build proxies --level seg,edge" in card and "| `ok` | 8 |" in card
    tables, features = load_back(tmp_path, hub, "seg")
    assert tables["seg"].num_rows == 8 and features["seg"]["seg"] == "Image"
    assert tables["seg"].column("seg").to_pylist() == local_table(out).column("seg").to_pylist()

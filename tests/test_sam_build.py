"""`sgt-data build sam` end to end against olah on 127.0.0.1, then `build proxies` on its output."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sgt_data import cli, shards
from tests.support import hub_repo, olah, proxy, sam_tars

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sa1b"
EVIL = {
    "../evil.jpg": ("file", b"x"),
    "/abs/sa_98.jpg": ("file", b"y"),
    "sa_99.jpg": ("symlink", "/etc/passwd"),
    "sa_97.jpg": ("hardlink", "sam_selection/sa_1.jpg"),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    if olah.find_olah_cli() is None:
        pytest.skip("olah not installed: python -m venv .venv-olah && .venv-olah/bin/pip install olah==0.5.4")
    if not any(EXAMPLES.glob("sa_*.jpg")):
        pytest.skip("examples/sa1b not built")
    root = tmp_path_factory.mktemp("samhub")
    inline = sam_tars.make_sam_files(EXAMPLES, root / "inline", masks="inline")
    sam_tars.add_members(inline["sam_selection/sam_selection-00001.tar"], EVIL)
    separate = sam_tars.make_sam_files(EXAMPLES, root / "separate", masks="separate")
    other = {"README.md": b"# not SAM\n", "data/train-00000.parquet": b"PAR1"}
    hub_repo.build_repo(root / "mirrors", "Two-hot/SAM-SGT", {**inline, "README.md": b"# SAM-SGT\n"})
    hub_repo.build_repo(root / "mirrors", "org/sam-separate", separate)
    hub_repo.build_repo(root / "mirrors", "org/other", other)
    with olah.running_olah(root / "mirrors", root / "olah") as server:
        yield server, inline


@pytest.fixture()
def env(monkeypatch, hub):
    """A decoy HF_ENDPOINT that must see no traffic; the CLI's own env changes are undone after the test."""
    with proxy.RecordingProxy(hub[0].url) as given, proxy.RecordingProxy(hub[0].url) as decoy:
        monkeypatch.setenv("HF_ENDPOINT", decoy.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "0")
        monkeypatch.setenv("HF_TOKEN", "hf_dummytesttoken00000000")
        yield given, decoy


def _build(out: Path, endpoint: str, *extra: str) -> int:
    return cli.main(["build", "sam", "--output", str(out), "--endpoint", endpoint, "--no-progress", *extra])


def _rows(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in shards.iter_rows(out)}


def test_build_sam_from_local_hub_then_build_proxies(env, hub, tmp_path, ray_session, capsys):
    given, decoy = env
    out = tmp_path / "sam"
    assert _build(out, given.url) == 0
    printed = capsys.readouterr()
    assert "hf_dummytesttoken" not in printed.out + printed.err
    # Every request went to the endpoint given, none to HF_ENDPOINT; every selected file was fetched from it.
    assert decoy.seen == [] and given.seen
    fetched = sorted(s.path.split("/resolve/")[1].split("/", 1)[1] for s in given.requests_for("/resolve/"))
    assert fetched == ["file_names/sam_190k_new.txt", *sorted(p for p in hub[1] if p.endswith(".tar"))]
    manifest = shards.read_manifest(out)
    assert manifest["counts"] == {"ok": 8, "unsafe_member": 4}
    assert manifest["source"]["endpoint"] == given.url and len(manifest["source"]["commit"]) == 40
    assert {m["name"] for m in manifest["rejected_members"]} == set(EVIL)
    assert "rejected sam_selection-00001.tar member '../evil.jpg'" in printed.err
    rows = _rows(out)
    with tarfile.open(hub[1]["sam_selection/sam_selection-00001.tar"]) as tar:
        png = tar.extractfile("sam_mask/sa_2.png").read()
        jpg = tar.extractfile("sam_selection/sa_2.jpg").read()
    assert rows["sa_2"]["sam_mask"]["bytes"] == png and rows["sa_2"]["image"]["bytes"] == jpg
    evil = rows["sam_selection-00001.tar:sa_99.jpg"]  # keyed by tar and member: unique across tars
    assert evil["status"] == "unsafe_member" and evil["image"] is None
    assert [p.name for p in shards.list_shards(out)] == ["shard-00100.parquet", "shard-00200.parquet"]
    assert not any(p.name == "evil.jpg" for p in tmp_path.rglob("*"))

    proxies_out = tmp_path / "proxies"
    assert cli.main(["build", "proxies", "--input", str(out), "--output", str(proxies_out), "--level", "seg",
                     "--no-progress"]) == 0  # fmt: skip
    built = shards.read_manifest(proxies_out)
    assert built["rows"] == 12 and built["counts"].get("ok") == 8

    # A rerun keeps both shards and downloads no tar again.
    before = len(given.requests_for(".tar"))
    assert _build(out, given.url) == 0
    assert "kept 2 completed" in capsys.readouterr().out
    assert len(given.requests_for(".tar")) == before


def test_masks_in_separate_tar_shards_are_paired_by_key(env, tmp_path, ray_session):
    given, _ = env
    out = tmp_path / "sep"
    assert _build(out, given.url, "--set", "repo_id=org/sam-separate", "--shards", "2") == 0
    rows = _rows(out)
    assert sorted(rows) == ["sa_5", "sa_6", "sa_7", "sa_8"]
    assert all(r["status"] == "ok" and r["sam_mask"]["bytes"][:4] == b"\x89PNG" for r in rows.values())
    assert not any("sam_selection-00001" in s.path for s in given.seen)


def test_too_little_disk_fails_at_plan_time(env, tmp_path, monkeypatch, capsys):
    given, _ = env
    monkeypatch.setenv("SGT_DATA_FREE_BYTES", "1000")
    assert _build(tmp_path / "small", given.url) == 2
    err = capsys.readouterr().err
    assert "not enough disk" in err and "1.0 KB free" in err
    assert given.requests_for("/resolve/") == [] and not shards.list_shards(tmp_path / "small")


def test_plan_only_prints_files_and_bytes(env, tmp_path, capsys):
    given, _ = env
    assert _build(tmp_path / "plan", given.url, "--plan", "--limit", "1") == 0
    out = capsys.readouterr().out
    assert "sam_selection/sam_selection-00001.tar  (to fetch)" in out and "sam_selection-00002" not in out
    assert "free" in out and given.requests_for("/resolve/") == []


def test_unknown_layout_fails_listing_the_repo(env, tmp_path, capsys):
    given, _ = env
    assert _build(tmp_path / "x", given.url, "--set", "repo_id=org/other") == 2
    err = capsys.readouterr().err
    assert "no SAM-SGT image shards" in err and "data/train-00000.parquet" in err


def test_from_raw_sa1b_keeps_annotations(tmp_path, ray_session):
    if not any(EXAMPLES.glob("sa_*.jpg")):
        pytest.skip("examples/sa1b not built")
    out = tmp_path / "raw"
    assert cli.main(["build", "sam", "--from", str(EXAMPLES), "--output", str(out), "--no-progress"]) == 0
    rows = _rows(out)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows.values())
    expected = json.loads((EXAMPLES / "sa_1.json").read_text())["annotations"]
    assert [a["counts"] for a in rows["sa_1"]["annotations"]] == [
        a["segmentation"]["counts"] for a in expected
    ]
    assert shards.read_manifest(out)["input_kind"] == "sa1b"
    table = pq.read_table(shards.list_shards(out)[0])
    assert table.schema.field("annotations").type == shards.ANNOTATIONS_TYPE


def test_from_disk_sam_tars(hub, tmp_path, ray_session):
    folder = tmp_path / "local"
    for rel, path in hub[1].items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(path.read_bytes())
    out = tmp_path / "disk"
    assert cli.main(["build", "sam", "--from", str(folder), "--output", str(out), "--no-progress"]) == 0
    assert shards.read_manifest(out)["counts"] == {"ok": 8, "unsafe_member": 4}


def test_from_raw_sa1b_tar_reports_unsafe_members(tmp_path, ray_session):
    if not any(EXAMPLES.glob("sa_*.jpg")):
        pytest.skip("examples/sa1b not built")
    tar_path = tmp_path / "sa_000000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in sorted(EXAMPLES.glob("sa_[12].*")):
            tar.add(p, arcname=p.name)
    sam_tars.add_members(tar_path, {"sa_9.jpg": ("symlink", "/etc/shadow"), "../sa_8.json": ("file", b"{}")})
    out = tmp_path / "raw-tar"
    assert cli.main(["build", "sam", "--from", str(tar_path), "--output", str(out), "--no-progress"]) == 0
    manifest = shards.read_manifest(out)
    assert {m["name"] for m in manifest["rejected_members"]} == {"sa_9.jpg", "../sa_8.json"}
    assert manifest["counts"].get("ok") == 2


def test_from_a_single_sam_tar_file(hub, tmp_path, ray_session):
    out = tmp_path / "one"
    tar_path = hub[1]["sam_selection/sam_selection-00002.tar"]
    assert cli.main(["build", "sam", "--from", str(tar_path), "--output", str(out), "--no-progress"]) == 0
    assert shards.read_manifest(out)["counts"] == {"ok": 4}

"""`sgt-data build llava-ov --endpoint` against olah on loopback serving a LLaVA-OV-shaped repo made here.

The repo has configs whose names hold parentheses and commas, several Parquet files and row groups each, a
text-only config, and bad rows (undecodable image, no conversations, `<image>` count mismatch). Builds go
straight to olah (which ignores `Range`: whole-file fallback) and through a Range-honouring counting proxy (as
the Hub's CDN): both must give byte-identical shards, with exact per-config counts.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from sgt_data import shards
from sgt_data.cli import main
from tests.support import hub_repo, olah

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "test-org/LLaVA-OneVision-Data"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(olah.find_olah_cli() is None, reason="olah not installed (.venv-olah/bin/olah-cli)"),
]


def _bench():
    spec = importlib.util.spec_from_file_location("ov_bytes", REPO / "benchmarks" / "ov_bytes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ov_bytes = _bench()


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5 + i % 7, 4), (i % 256, 80, 160)).save(buf, format="PNG")
    return buf.getvalue()


def _rows(config: str, n: int, image: bool) -> list[dict]:
    rows = []
    for i in range(n):
        q = ("<image>\n" if image else "") + f"question {i} about {config}"
        conv = [{"from": "human", "value": q}, {"from": "gpt", "value": f"answer {i}"}]
        img = {"bytes": _png(i), "path": None} if image else None
        rows.append({"id": f"{config}-{i}", "image": img, "conversations": conv, "data_source": config})
    return rows


AI2D = "ai2d(cauldron,llava_format)"
CHART = "chartqa(cauldron,llava_format)"
GEO = "geo170k(qa)"
MAGPIE = "magpie_pro(l3_80b_st)"
SPEC = f"""\
repo_id: {REPO_ID}
seed: 5
rows_per_shard: 12
total: 79
categories:
  Doc_Chart_Screen:
    total: 63
    configs: {{"{AI2D}": 50, "{CHART}": 13}}
  Math_Reasoning:
    total: 7
    configs: {{"{GEO}": 7}}
  Language:
    total: 9
    configs: {{"{MAGPIE}": 9}}
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovhub")
    ai2d = _rows(AI2D, 50, True)
    ai2d[3]["image"] = {"bytes": b"\x89PNG\r\n\x1a\nbroken", "path": None}  # undecodable
    ai2d[17]["conversations"] = []  # nothing to train on
    ai2d[31]["conversations"][0]["value"] = "no placeholder here"  # 0 <image> for 1 image
    files = {"README.md": b"# LLaVA-OV-shaped test repo\n"}
    files |= ov_bytes.config_files(AI2D, ai2d, 2, 10)
    files |= ov_bytes.config_files(CHART, _rows(CHART, 60, True), 3, 8)
    files |= ov_bytes.config_files(GEO, _rows(GEO, 30, True), 1, 10)
    files |= ov_bytes.config_files(MAGPIE, _rows(MAGPIE, 60, False), 2, 10)
    repo = hub_repo.build_repo(root / "mirrors", REPO_ID, files)
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    with olah.running_olah(root / "mirrors", root / "olah") as server:
        yield server, spec, repo


def _build(monkeypatch, endpoint: str, spec: Path, out: Path, *extra: str) -> int:
    # The CLI sets HF_ENDPOINT / HF_HUB_DISABLE_XET for the process; monkeypatch restores them afterwards.
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_dummytokenfortests")
    argv = ["build", "llava-ov", "--endpoint", endpoint, "--pipeline", str(spec), "--output", str(out)]
    return main([*argv, "--no-progress", *extra])


@pytest.fixture(scope="module")
def direct(hub, ray_session, tmp_path_factory):
    server, spec, _ = hub
    out = tmp_path_factory.mktemp("direct") / "out"
    with pytest.MonkeyPatch.context() as mp:
        assert _build(mp, server.url, spec, out) == 0
    return out


def test_exact_counts_per_config_and_status(direct, hub):
    manifest = json.loads((direct / "manifest.json").read_text())
    assert manifest["rows"] == 79 and manifest["inputs_total"] == 79
    assert manifest["counts"] == {"bad_conversation": 2, "bad_image": 1, "ok": 76}
    counts = {name: c["counts"] for name, c in manifest["configs"].items()}
    assert counts == {
        AI2D: {"bad_conversation": 2, "bad_image": 1, "ok": 47},
        CHART: {"ok": 13},
        GEO: {"ok": 7},
        MAGPIE: {"ok": 9},
    }
    assert manifest["source"]["revision"] == hub[2].commit  # pinned to the commit, not "main"
    # keys: config/id@file:row_group:row (LLaVA ids repeat; where the row was read makes the key unique)
    bad = {r["key"].split("@")[0]: r for r in shards.iter_rows(direct) if r["status"] != "ok"}
    assert set(bad) == {f"{AI2D}/{AI2D}-3", f"{AI2D}/{AI2D}-17", f"{AI2D}/{AI2D}-31"}
    assert bad[f"{AI2D}/{AI2D}-3"]["image"] is None and "do not decode" in bad[f"{AI2D}/{AI2D}-3"]["error"]
    assert bad[f"{AI2D}/{AI2D}-3"]["key"].endswith(".parquet:0:3")
    magpie = [r for r in shards.iter_rows(direct) if r["source"] == MAGPIE]
    assert len(magpie) == 9 and all(r["image"] is None and r["category"] == "Language" for r in magpie)
    assert main(["validate", str(direct)]) == 0


def test_ranged_build_is_identical_and_fetches_less(direct, hub, tmp_path, monkeypatch):
    server, spec, repo = hub
    out = tmp_path / "ranged"
    with ov_bytes.RangeProxy(server.url) as proxy:
        assert _build(monkeypatch, proxy.url, spec, out) == 0
        sent = proxy.sent
    names = [p.name for p in shards.list_shards(direct)]
    assert names == [p.name for p in shards.list_shards(out)]
    for name in names:
        assert (out / name).read_bytes() == (direct / name).read_bytes()
    wanted = sum(info.size for path, info in repo.files.items() if path.endswith(".parquet"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bytes"]["fetched"] <= sent < wanted  # less than the configs' files, all counted
    assert manifest["bytes"]["whole_file_responses"] == 0
    direct_bytes = json.loads((direct / "manifest.json").read_text())["bytes"]
    assert direct_bytes["whole_file_responses"] > 0  # olah ignores Range: noticed, counted, still correct
    assert direct_bytes["fetched"] > manifest["bytes"]["fetched"]


def test_missing_config_fails_at_plan_time(hub, tmp_path, monkeypatch, capsys):
    server, spec, _ = hub
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace(f'"{GEO}": 7', '"docvqa(cauldron,llava_format)": 7'))
    out = tmp_path / "out"
    assert _build(monkeypatch, server.url, bad, out) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "docvqa(cauldron,llava_format)" in err
    assert f"available configs (4): {AI2D}, {CHART}, {GEO}, {MAGPIE}" in err
    assert not shards.list_shards(out)


def test_unknown_repo_fails_with_an_actionable_message(hub, tmp_path, monkeypatch, capsys):
    server, spec, _ = hub
    out = tmp_path / "out"
    assert _build(monkeypatch, server.url, spec, out, "--repo-id", "test-org/nope", "--plan") == 2
    err = capsys.readouterr().err
    assert "cannot list dataset test-org/nope@main" in err and "--endpoint / --mirror" in err
    assert "hf_dummytokenfortests" not in err


def test_datasets_loads_hub_build(direct):
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=[str(p) for p in shards.list_shards(direct)], split="train"
    )
    assert len(ds) == 79 and set(ds["source"]) == {AI2D, CHART, GEO, MAGPIE}
    ok = ds.filter(lambda r: r["status"] == "ok" and r["image"] is not None)
    assert ok[0]["image"].mode == "RGB"

"""Unit tests of the push building blocks: card rendering, retry policy, hashing cache, Xet guard, token scrub."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from support.built import make_folder

from sgt_data import card, push, shards

TOKEN = "hf_UnitTestTokenDoNotLeak0123456789"


def _header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])


@pytest.fixture
def built(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "built")


def _render(folder: Path, **kw) -> str:
    manifest = shards.read_manifest(folder)
    schema = pq.read_schema(folder / "shard-00000.parquet")
    files = ["data/shard-00000.parquet", "data/shard-00001.parquet"]
    return card.render_card(manifest, repo_id="org/sgt-proxies", schema=schema, data_files=files, **kw)


def test_card_configs_per_level(built: Path):
    text = _render(built, push_command=["sgt-data", "push", "out", "--repo-id", "org/sgt-proxies"])
    meta = _header(text)
    names = [c["config_name"] for c in meta["configs"]]
    assert names == ["all", "seg", "edge"]
    seg = meta["configs"][1]
    assert seg["data_files"] == [
        {"split": "train", "path": ["data/shard-00000.parquet", "data/shard-00001.parquet"]}
    ]
    assert (
        "seg" in seg["columns"]
        and "edge" not in seg["columns"]
        and seg["filters"] == [["status", "==", "ok"]]
    )
    info = {i["config_name"]: i for i in meta["dataset_info"]}
    seg_features = {f["name"]: f.get("dtype") for f in info["seg"]["features"]}
    assert seg_features["image"] == "image" and seg_features["seg"] == "image"
    assert list(seg_features) == seg["columns"]
    assert info["all"]["splits"][0]["num_examples"] == 9 and info["seg"]["splits"][0]["num_examples"] == 8
    assert "&id" not in text  # no YAML anchors
    for needle in (
        "| `bad_image` | 1 |",
        "sgt-data build proxies --level seg,edge",
        "eprint        = {2605.18714}",
    ):
        assert needle in text
    assert "SA-1B Dataset Research License" in text and "Segment instances with different colors." in text
    assert "sgt-data push out --repo-id org/sgt-proxies" in text


def test_card_is_deterministic(built: Path):
    assert _render(built) == _render(built)


def test_card_requires_counts_and_tolerates_missing_optional(built: Path):
    manifest = shards.read_manifest(built)
    schema = pq.read_schema(built / "shard-00000.parquet")
    with pytest.raises(card.CardError, match=r"lacks \['counts'\]"):
        card.render_card(
            {k: v for k, v in manifest.items() if k != "counts"}, repo_id="o/n", schema=schema, data_files=[]
        )
    minimal = {k: manifest[k] for k in ("counts", "rows", "shards")}
    text = card.render_card(minimal, repo_id="o/n", schema=schema, data_files=["data/a.parquet"])
    assert "Build command" not in text and _header(text)["configs"][1]["config_name"] == "seg"


def test_card_vqa_configs_per_category():
    schema = shards.schema_for(shards.VQA_COLUMNS)
    manifest = {"counts": {"ok": 5}, "rows": 5, "shards": 1, "kind": "vqa"}
    manifest["configs"] = {
        "geo170k(qa)": {"category": "Math_Reasoning", "counts": {"ok": 2}},
        "odd": "not a dict",
    }
    text = card.render_card(
        manifest,
        repo_id="o/vqa",
        schema=schema,
        data_files=["data/shard-00000.parquet"],
        categories={"General VQA": 3, "Doc/Chart/Screen": 2},
    )
    meta = _header(text)
    cfgs = {c["config_name"]: c for c in meta["configs"]}
    assert set(cfgs) == {"all", "general_vqa", "doc_chart_screen"}
    assert cfgs["doc_chart_screen"]["filters"] == [
        ["category", "==", "Doc/Chart/Screen"],
        ["status", "==", "ok"],
    ]
    assert meta["task_categories"] == ["visual-question-answering"] and "LLaVA-OneVision" in text
    assert "| `geo170k(qa)` | Math_Reasoning | 2 |" in text and "| `odd` |  | 0 |" in text
    conv = next(f for f in meta["dataset_info"][0]["features"] if f["name"] == "conversations")
    assert [x["name"] for x in conv["list"]] == ["from", "value"]


def test_card_rejects_unknown_kind(built: Path):
    manifest = dict(shards.read_manifest(built), kind="video")
    schema = pq.read_schema(built / "shard-00000.parquet")
    with pytest.raises(card.CardError, match="kind 'video'"):
        card.render_card(manifest, repo_id="o/n", schema=schema, data_files=[])


class _Response:
    def __init__(self, status: int, headers: dict | None = None):
        self.status_code, self.headers = status, headers or {}


class _HTTPError(Exception):
    def __init__(self, status: int, headers: dict | None = None):
        super().__init__(f"HTTP {status} for a request with Bearer {TOKEN}")
        self.response = _Response(status, headers)


class RemoteProtocolError(Exception):
    """Named like httpx's: the retry policy classifies by class name along the chain."""


def test_retry_policy_classification():
    assert push.is_retryable(_HTTPError(503)) and push.is_retryable(_HTTPError(429))
    assert not push.is_retryable(_HTTPError(401)) and not push.is_retryable(ValueError("bad yaml"))
    try:
        try:
            raise RemoteProtocolError("peer closed connection")
        except RemoteProtocolError as inner:
            raise RuntimeError("Error while uploading 'data/x.parquet' to the Hub.") from inner
    except RuntimeError as wrapped:
        assert push.is_retryable(wrapped)
    assert push.retry_after(_HTTPError(429, {"Retry-After": "3"})) == 3.0


def test_with_retries_is_bounded_and_redacts(capsys):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _HTTPError(503)
        return "done"

    assert push.with_retries(flaky, "commit 1/1", attempts=4, wait=0.001, token=TOKEN) == "done"
    assert len(calls) == 3
    err = capsys.readouterr().err
    assert "retry 1/3" in err and TOKEN not in err and "***" in err
    attempts = []

    def always(exc: Exception):
        attempts.append(1)
        raise exc

    with pytest.raises(_HTTPError):
        push.with_retries(lambda: always(_HTTPError(500)), "x", attempts=2, wait=0.001, token=None)
    assert len(attempts) == 2
    with pytest.raises(ValueError):
        push.with_retries(lambda: always(ValueError("no")), "x", attempts=5, wait=0.001, token=None)
    assert len(attempts) == 3  # not retryable: one more call, no retry


def test_sha256_cache_reuses_and_refreshes(built: Path, monkeypatch):
    paths = shards.list_shards(built)
    first = push.cached_sha256(built, paths)
    assert first["shard-00000.parquet"] == push.sha256_file(paths[0])
    cache = json.loads((built / push.CACHE_NAME).read_text())
    assert set(cache) == {"shard-00000.parquet", "shard-00001.parquet"}
    monkeypatch.setattr(push, "sha256_file", lambda p: pytest.fail("cached hash recomputed"))
    assert push.cached_sha256(built, paths) == first
    monkeypatch.undo()
    paths[1].write_bytes(paths[1].read_bytes() + b"x")
    assert push.cached_sha256(built, paths)["shard-00001.parquet"] != first["shard-00001.parquet"]


def test_xet_guard(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.setattr(push.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(push.PushError, match="HF_HUB_DISABLE_XET=1"):
        push.check_xet("http://127.0.0.1:9")
    push.check_xet("https://huggingface.co")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    push.check_xet("http://127.0.0.1:9")


def test_scrub_only_touches_the_token(capsys):
    assert push.scrub("uses hf_transfer_speedup", TOKEN) == "uses hf_transfer_speedup"
    assert push.scrub(f"token={TOKEN}", TOKEN) == "token=***"
    assert "was removed" in capsys.readouterr().err


def test_git_blob_oid_matches_git():
    assert push.git_blob_oid(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_run_refuses_mirror_and_missing_token(built: Path, monkeypatch, capsys):
    import argparse

    from sgt_data import hub

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(hub, "get_token", lambda env, endpoint=None: None)
    parser = argparse.ArgumentParser()
    push.add_arguments(parser)
    args = parser.parse_args([str(built), "--repo-id", "o/n", "--mirror"])
    assert push.run(args) == 1
    assert "download-only" in capsys.readouterr().err
    args = parser.parse_args([str(built), "--repo-id", "o/n", "--endpoint", "http://127.0.0.1:9"])
    assert push.run(args) == 1
    assert "no Hub token: set HF_TOKEN" in capsys.readouterr().err


def test_category_config_names_are_unique():
    names = card.category_names({"General VQA": 1, "general_vqa": 2, "all": 3, "": 4})
    assert sorted(names.values()) == ["all_2", "general_vqa", "general_vqa_2", "other"]

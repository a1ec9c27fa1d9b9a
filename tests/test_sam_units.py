"""Unit tests of the SAM-SGT pieces that need no server: tar safety, layout discovery, pairing, rows."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from sgt_data.runner import ShardTask
from sgt_data.sources import sam_layout, tar_safe
from tests.support import sam_tars

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sa1b"


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_scan_rejects_every_unsafe_member_and_keeps_good_ones(tmp_path):
    tar = _tar(tmp_path / "t.tar", {"sam_selection/sa_1.jpg": b"good", "./sam_mask//sa_1.png": b"mask"})
    sam_tars.add_members(
        tar,
        {
            "../../etc/evil.jpg": ("file", b"x"),
            "/abs/sa_2.jpg": ("file", b"y"),
            "sa_3.jpg": ("symlink", "/etc/passwd"),
            "sa_4.jpg": ("hardlink", "sam_selection/sa_1.jpg"),
            "sa_5.jpg": ("device", ""),
        },
    )
    members, rejected = tar_safe.scan(tar)
    assert [m.name for m in members] == ["sam_selection/sa_1.jpg", "sam_mask/sa_1.png"]
    assert members[0].ref.read() == b"good" and members[1].ref.read() == b"mask"
    reasons = {r.name: r.reason for r in rejected}
    assert set(reasons) == {"../../etc/evil.jpg", "/abs/sa_2.jpg", "sa_3.jpg", "sa_4.jpg", "sa_5.jpg"}
    assert "(..)" in reasons["../../etc/evil.jpg"] and "absolute" in reasons["/abs/sa_2.jpg"]
    assert "symbolic" in reasons["sa_3.jpg"] and "hard link" in reasons["sa_4.jpg"]
    assert "device" in reasons["sa_5.jpg"]


def test_stream_reads_front_to_back_and_rejects_links(tmp_path):
    tar = _tar(tmp_path / "t.tar", {"a/sa_1.jpg": b"1"})
    sam_tars.add_members(tar, {"sa_2.jpg": ("symlink", "a/sa_1.jpg")})
    with open(tar, "rb") as f:
        out = list(tar_safe.stream(f, "t.tar"))
    assert out[0] == ("a/sa_1.jpg", b"1")
    assert isinstance(out[1], tar_safe.Rejected) and "symbolic" in out[1].reason


def test_not_a_tar_names_the_file(tmp_path):
    bad = tmp_path / "x.tar"
    bad.write_bytes(b"definitely not a tar archive" * 100)
    with pytest.raises(ValueError, match="x.tar"):
        tar_safe.scan(bad)


def test_layout_inline_and_separate_masks():
    paths = [
        "README.md",
        ".gitattributes",
        "file_names/sam_190k_new.txt",
        "sam_selection/sam_selection-00001.tar",
        "sam_selection/sam_selection-00002.tar",
        "sam_mask/sam_mask-00002.tar",
    ]
    layout = sam_layout.discover_layout(paths, "repo")
    assert layout.shards == {
        1: ["sam_selection/sam_selection-00001.tar"],
        2: ["sam_mask/sam_mask-00002.tar", "sam_selection/sam_selection-00002.tar"],
    }
    assert layout.file_lists == ["file_names/sam_190k_new.txt"]
    assert sam_layout.select(layout, "2", None) == [2]
    assert sam_layout.select(layout, None, 1) == [1]
    with pytest.raises(sam_layout.LayoutError, match=r"no shard \[7\]"):
        sam_layout.select(layout, "1,7", None)


def test_unknown_layout_fails_listing_what_was_found():
    paths = ["README.md"] + [f"data/train-{i:05d}.parquet" for i in range(30)]
    with pytest.raises(sam_layout.LayoutError) as err:
        sam_layout.discover_layout(paths, "org/other@abc")
    text = str(err.value)
    assert "org/other@abc" in text and "sam_selection" in text
    assert "30  data/*.parquet" in text and "data/train-00000.parquet" in text and "more" in text


def test_orphan_mask_shards_are_a_layout_error():
    with pytest.raises(sam_layout.LayoutError, match=r"\[3\]"):
        sam_layout.discover_layout(
            ["sam_selection/sam_selection-00001.tar", "sam_mask/sam_mask-00003.tar"], "repo"
        )


def test_parse_selection():
    assert sam_layout.parse_selection("1-3,7, 9-10") == {1, 2, 3, 7, 9, 10}
    with pytest.raises(ValueError, match="1-4,7"):
        sam_layout.parse_selection("a-b")


def test_pairing_across_tars_gives_rows_and_error_rows(tmp_path):
    if not any(EXAMPLES.glob("sa_*.jpg")):
        pytest.skip("examples/sa1b not built")
    jpg = (EXAMPLES / "sa_1.jpg").read_bytes()
    png = sam_tars.colour_mask(EXAMPLES / "sa_1.json")
    images = _tar(
        tmp_path / "sam_selection-00001.tar",
        {
            "sam_selection/sa_1.jpg": jpg,
            "sam_selection/sa_2.jpg": jpg,  # no mask anywhere
            "sam_selection/sa_3.jpg": jpg[: len(jpg) // 2],  # truncated
            "sam_selection/sa_1.jpeg": jpg,  # a second image for sa_1
            "sam_selection/__key__.txt": b"ignored",
        },
    )
    masks = _tar(tmp_path / "sam_mask-00001.tar", {"sam_mask/sa_1.png": png, "sam_mask/sa_3.png": png})
    scanned = [(str(p), *tar_safe.scan(p)) for p in (images, masks)]
    samples = sam_layout.pair_members(scanned)
    rows = {r["key"]: r for chunk in sam_layout.read_sam_task(ShardTask(0, samples)) for r in _rows(chunk)}
    dup_key = "sa_1#dup:sam_selection-00001.tar:sam_selection/sa_1.jpeg"
    assert set(rows) == {"sa_1", "sa_2", "sa_3", dup_key}
    ok = rows["sa_1"]
    assert ok["status"] == "ok" and ok["image"] == jpg and ok["sam_mask"] == png
    assert (ok["width"], ok["height"]) == (768, 768)
    assert rows["sa_2"]["status"] == "missing_partner" and "sam_mask/sa_2.png" in rows["sa_2"]["error"]
    assert rows["sa_3"]["status"] == "bad_image" and "truncated" in rows["sa_3"]["error"]
    assert rows[dup_key]["status"] == "duplicate_member"


def test_corrupt_mask_is_a_bad_target_row(tmp_path):
    if not any(EXAMPLES.glob("sa_*.jpg")):
        pytest.skip("examples/sa1b not built")
    tar = _tar(
        tmp_path / "sam_selection-00001.tar",
        {
            "sam_selection/sa_1.jpg": (EXAMPLES / "sa_1.jpg").read_bytes(),
            "sam_mask/sa_1.png": b"\x89PNG junk",
        },
    )
    samples = sam_layout.pair_members([(str(tar), *tar_safe.scan(tar))])
    (row,) = _rows(next(sam_layout.read_sam_task(ShardTask(0, samples))))
    assert row["status"] == "bad_target" and "sa_1.png" in row["error"]


def _rows(batch: dict) -> list[dict]:
    return [dict(zip(batch, values)) for values in zip(*batch.values())]

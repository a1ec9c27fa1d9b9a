"""SA-1B inputs: folder and tar discovery, pairing, error rows for bad or unsafe members."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from sgt_data.sources.sa1b import discover, parse_annotations, sample_row

DOC = {"image": {"width": 4, "height": 2}, "annotations": [{"id": 5, "area": 2, "segmentation": {"size": [2, 4], "counts": "02N0"}}]}  # fmt: skip


def _add(
    tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


def test_tar_members_are_paired_and_unsafe_ones_become_rows(tmp_path):
    path = tmp_path / "sa_000000.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "sa_1.jpg", b"jpeg-bytes")
        _add(tar, "sa_1.json", json.dumps(DOC).encode())
        _add(tar, "../sa_2.jpg", b"evil")
        _add(tar, "/abs/sa_3.json", b"{}")
        _add(tar, "sa_4.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tar, "sa_5.jpg", kind=tarfile.LNKTYPE, link="sa_1.jpg")
        _add(tar, "sa_6.jpg", kind=tarfile.CHRTYPE)
    rows = {r["key"]: r for r in map(sample_row, discover(path))}
    assert rows["sa_1"]["status"] == "ok" and rows["sa_1"]["image"] == b"jpeg-bytes"
    assert rows["sa_1"]["annotations"] == [{"id": 5, "area": 2, "size": [2, 4], "counts": "02N0"}]
    assert (rows["sa_1"]["width"], rows["sa_1"]["height"]) == (4, 2)
    unsafe = {k: r for k, r in rows.items() if k != "sa_1"}
    assert len(unsafe) == 5 and {r["status"] for r in unsafe.values()} == {"unsafe_member"}
    error = {k.split("#")[0]: r["error"] for k, r in unsafe.items()}
    assert "climbs out" in error["sa_2"] and "absolute" in error["sa_3"]
    assert "symbolic link" in error["sa_4"] and "hard link" in error["sa_5"]
    assert all("sa_000000.tar" in k for k in unsafe), "unsafe keys name the tar they came from"


def test_folder_pairs_by_key_and_reports_missing_partners(tmp_path):
    (tmp_path / "sa_1.jpg").write_bytes(b"a")
    (tmp_path / "sa_1.json").write_text(json.dumps(DOC))
    (tmp_path / "sa_2.jpg").write_bytes(b"b")
    (tmp_path / "sa_3.json").write_text(json.dumps(DOC))
    rows = [sample_row(s) for s in discover(tmp_path)]
    assert [(r["key"], r["status"]) for r in rows] == [("sa_1", "ok"), ("sa_2", "missing_partner"), ("sa_3", "missing_partner")]  # fmt: skip
    assert "sa_2.json" in rows[1]["error"] and "sa_3.jpg" in rows[2]["error"]


def test_duplicate_copies_become_rows_never_vanish(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "sa_1.jpg").write_bytes(folder.encode())
        (tmp_path / folder / "sa_1.json").write_text(json.dumps(DOC))
    (tmp_path / "sa_2.jpg").write_bytes(b"x")
    (tmp_path / "sa_2.JPG").write_bytes(b"y")
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        _add(tar, "sa_2.json", json.dumps(DOC).encode())
    rows = [sample_row(s) for s in discover(tmp_path)]
    # 7 files: sa_1 pair + its 2 copies in b/, sa_2 pair (jpg or JPG + the tar's json) + the other case variant
    assert sorted(r["status"] for r in rows) == ["duplicate"] * 3 + ["ok"] * 2
    assert len({r["key"] for r in rows}) == len(rows), "keys stay unique"
    for r in rows:
        if r["status"] == "duplicate":
            assert (
                "keep one copy" in r["error"]
                and r["origin"]
                and r["key"].startswith(("sa_1#dup:", "sa_2#dup:"))
            )


@pytest.mark.parametrize(
    "raw, message",
    [(b"{oops", "not valid JSON"), (b"[]", "no 'annotations' list"), (b'{"annotations": [{"id": 1}]}', "no segmentation"),
     (b'{"annotations": [{"segmentation": {"size": [1, 1], "counts": [1]}}]}', "not a compressed RLE string"),
     (b'{"annotations": [{"id": "x1", "segmentation": {"size": [1, 1], "counts": "1"}}]}', "id 'x1' is not an integer"),
     (b'{"annotations": [{"segmentation": {"size": ["1", 1], "counts": "1"}}]}', "not \\[height, width\\] integers")],
)  # fmt: skip
def test_bad_annotation_files_name_the_sample(raw, message):
    from sgt_data.errors import BadAnnotations

    with pytest.raises(BadAnnotations, match=message) as err:
        parse_annotations(raw, "sa_9")
    assert "sa_9.json" in str(err.value)


def test_json_image_size_is_kept_only_when_integer():
    raw = json.dumps({"image": {"width": "1500", "height": True}, "annotations": []}).encode()
    assert parse_annotations(raw, "sa_1") == ([], None, None)


def test_discover_rejects_missing_paths_and_non_tars(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        discover(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a tar"):
        discover(tmp_path / "x.txt")

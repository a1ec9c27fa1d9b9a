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
    assert "climbs out" in rows["sa_2.jpg"]["error"] and "absolute" in rows["sa_3.json"]["error"]
    assert "symbolic link" in rows["sa_4.jpg"]["error"] and "hard link" in rows["sa_5.jpg"]["error"]


def test_folder_pairs_by_key_and_reports_missing_partners(tmp_path):
    (tmp_path / "sa_1.jpg").write_bytes(b"a")
    (tmp_path / "sa_1.json").write_text(json.dumps(DOC))
    (tmp_path / "sa_2.jpg").write_bytes(b"b")
    (tmp_path / "sa_3.json").write_text(json.dumps(DOC))
    rows = [sample_row(s) for s in discover(tmp_path)]
    assert [(r["key"], r["status"]) for r in rows] == [("sa_1", "ok"), ("sa_2", "missing_partner"), ("sa_3", "missing_partner")]  # fmt: skip
    assert "sa_2.json" in rows[1]["error"] and "sa_3.jpg" in rows[2]["error"]


@pytest.mark.parametrize(
    "raw, message",
    [(b"{oops", "not valid JSON"), (b"[]", "no 'annotations' list"), (b'{"annotations": [{"id": 1}]}', "no segmentation"),
     (b'{"annotations": [{"segmentation": {"size": [1, 1], "counts": [1]}}]}', "not a compressed RLE string")],
)  # fmt: skip
def test_bad_annotation_files_name_the_sample(raw, message):
    from sgt_data.errors import BadAnnotations

    with pytest.raises(BadAnnotations, match=message) as err:
        parse_annotations(raw, "sa_9")
    assert "sa_9.json" in str(err.value)


def test_discover_rejects_missing_paths_and_non_tars(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        discover(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a tar"):
        discover(tmp_path / "x.txt")

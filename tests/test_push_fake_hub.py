"""The fake Hub is only useful if it is strict: malformed requests get a clear 4xx, well-formed ones round-trip.

Raw `http.client` requests (no huggingface_hub), one kept-alive connection per test where it matters.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json

import pytest
from fake_hub import FakeHub, git_blob_oid

pytestmark = pytest.mark.integration

TOKEN = "hf_FakeHubStrictnessToken000111"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = "/api/datasets/org/ds"


def call(conn: http.client.HTTPConnection, method: str, path: str, body=None, headers=None):
    """One request on `conn`; returns (status, headers, decoded JSON or raw bytes)."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    hdrs = {**AUTH, **({"Content-Type": "application/json"} if isinstance(body, (dict, list)) else {})}
    conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read()
    try:
        return resp.status, resp.headers, json.loads(raw)
    except ValueError:
        return resp.status, resp.headers, raw


@pytest.fixture
def hub():
    with FakeHub(token=TOKEN) as server:
        yield server


@pytest.fixture
def conn(hub: FakeHub):
    c = http.client.HTTPConnection("127.0.0.1", hub.server_address[1], timeout=10)
    status, _, body = call(
        c, "POST", "/api/repos/create", {"name": "ds", "organization": "org", "type": "dataset"}
    )
    assert status == 200 and body["url"] == f"{hub.url}/datasets/org/ds"
    yield c
    c.close()


def _ndjson(*lines) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


HEADER = {"key": "header", "value": {"summary": "s", "description": ""}}
NDJSON = {"Content-Type": "application/x-ndjson"}


def test_create_repo_rules(hub: FakeHub, conn):
    status, _, body = call(
        conn, "POST", "/api/repos/create", {"name": "ds", "organization": "org", "type": "dataset"}
    )
    assert status == 409 and body["url"].endswith("/datasets/org/ds")
    assert call(conn, "POST", "/api/repos/create", {"name": "bad name!", "type": "dataset"})[0] == 400
    status, _, _ = call(
        conn, "POST", "/api/repos/create", {"name": "x", "type": "dataset"}, {"Authorization": "Bearer nope"}
    )
    assert status == 401
    # the 401 came before the body was read: the same connection must still be in sync
    assert call(conn, "GET", f"{REPO}/revision/main")[0] == 200


def test_preupload_validates_samples(conn):
    good = {"path": "a.txt", "size": 3, "sample": base64.b64encode(b"abc").decode()}
    status, _, body = call(conn, "POST", f"{REPO}/preupload/main", {"files": [good]})
    assert status == 200 and body["files"][0]["uploadMode"] == "regular"
    bad_b64 = dict(good, sample="***")
    assert call(conn, "POST", f"{REPO}/preupload/main", {"files": [bad_b64]})[0] == 400
    short = dict(good, size=4)
    status, _, body = call(conn, "POST", f"{REPO}/preupload/main", {"files": [short]})
    assert status == 400 and "sample has 3 bytes, expected 4" in body["error"]
    assert call(conn, "POST", f"{REPO}/preupload/main", {"files": [good] * 257})[0] == 400
    status, headers, _ = call(conn, "POST", "/api/datasets/org/missing/preupload/main", {"files": [good]})
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"
    status, headers, _ = call(conn, "POST", f"{REPO}/preupload/v9", {"files": [good]})
    assert status == 404 and headers["X-Error-Code"] == "RevisionNotFound"


def test_lfs_put_checks_sha256_and_commit_checks_objects(hub: FakeHub, conn):
    blob = b"\0parquet bytes" * 100
    oid = hashlib.sha256(blob).hexdigest()
    lfs = {"Content-Type": "application/vnd.git-lfs+json"}
    batch = {
        "operation": "upload",
        "transfers": ["basic"],
        "hash_algo": "sha256",
        "objects": [{"oid": oid, "size": len(blob)}],
    }
    assert (
        call(conn, "POST", "/datasets/org/ds.git/info/lfs/objects/batch", batch)[0] == 400
    )  # JSON content type
    bad = dict(batch, objects=[{"oid": "xyz", "size": 1}])
    assert call(conn, "POST", "/datasets/org/ds.git/info/lfs/objects/batch", bad, lfs)[0] == 400
    status, _, body = call(conn, "POST", "/datasets/org/ds.git/info/lfs/objects/batch", batch, lfs)
    href = body["objects"][0]["actions"]["upload"]["href"]
    path = href[len(hub.url) :]
    status, _, body = call(conn, "PUT", path, blob[:-1] + b"x")
    assert status == 400 and "do not match oid" in body["error"] and oid not in hub.lfs

    line = {
        "key": "lfsFile",
        "value": {"path": "data/a.parquet", "algo": "sha256", "oid": oid, "size": len(blob)},
    }
    status, _, body = call(conn, "POST", f"{REPO}/commit/main", _ndjson(HEADER, line), NDJSON)
    assert status == 422 and "never uploaded" in body["error"]
    assert call(conn, "PUT", path, blob)[0] == 200
    status, _, body = call(conn, "POST", f"{REPO}/commit/main", _ndjson(HEADER, line), NDJSON)
    assert status == 200 and len(body["commitOid"]) == 40
    status, _, again = call(conn, "POST", "/datasets/org/ds.git/info/lfs/objects/batch", batch, lfs)
    assert "actions" not in again["objects"][0]  # stored objects need no second upload
    status, headers, data = call(
        conn, "GET", "/datasets/org/ds/resolve/main/data/a.parquet", headers={"Range": "bytes=2-5"}
    )
    assert status == 206 and data == blob[2:6] and headers["X-Linked-Etag"] == f'"{oid}"'


def test_commit_rejects_malformed_ndjson(conn):
    file_line = {
        "key": "file",
        "value": {"path": "n.txt", "content": base64.b64encode(b"hi\n").decode(), "encoding": "base64"},
    }
    assert call(conn, "POST", f"{REPO}/commit/main", _ndjson(HEADER, file_line))[0] == 400  # not NDJSON
    assert call(conn, "POST", f"{REPO}/commit/main", _ndjson(file_line), NDJSON)[0] == 400  # no header line
    assert call(conn, "POST", f"{REPO}/commit/main", _ndjson(HEADER), NDJSON)[0] == 400  # no operation
    traversal = {"key": "file", "value": dict(file_line["value"], path="../x")}
    assert call(conn, "POST", f"{REPO}/commit/main", _ndjson(HEADER, traversal), NDJSON)[0] == 400
    unknown = {"key": "renameFile", "value": {"path": "n.txt"}}
    assert call(conn, "POST", f"{REPO}/commit/main", _ndjson(HEADER, unknown), NDJSON)[0] == 400
    assert call(conn, "POST", f"{REPO}/commit/main", _ndjson(HEADER, file_line), NDJSON)[0] == 200
    status, _, info = call(
        conn,
        "POST",
        f"{REPO}/paths-info/main",
        b"paths=n.txt&paths=nope&expand=False",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and info == [
        {"type": "file", "path": "n.txt", "size": 3, "oid": git_blob_oid(b"hi\n")}
    ]


def test_validate_yaml_reports_card_errors(conn):
    good = (
        "---\nconfigs:\n- config_name: all\n  data_files:\n  - split: train\n    path: data/*.parquet\n---\n"
    )
    assert (
        call(conn, "POST", "/api/validate-yaml", {"content": good, "repoType": "dataset"})[2]["errors"] == []
    )
    bad = "---\nconfigs:\n- config_name: all\n  data_files: data/x.parquet\n---\n"
    errors = call(conn, "POST", "/api/validate-yaml", {"content": bad, "repoType": "dataset"})[2]["errors"]
    assert "data_files must be a list" in errors[0]["message"]


def test_private_repo_hidden_without_token(hub: FakeHub, conn):
    call(
        conn,
        "POST",
        "/api/repos/create",
        {"name": "p", "organization": "org", "type": "dataset", "visibility": "private"},
    )
    status, headers, _ = call(conn, "GET", "/api/datasets/org/p/revision/main", headers={"Authorization": ""})
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"
    assert call(conn, "GET", "/api/datasets/org/p/revision/main")[0] == 200
    assert call(conn, "GET", "/api/nothing/here")[0] == 404 and hub.unknown_routes == [
        "GET /api/nothing/here"
    ]

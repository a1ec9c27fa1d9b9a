"""hub_download against a real Hub-compatible server (olah on 127.0.0.1), with link faults from a loopback proxy."""

from __future__ import annotations

import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sgt_data import download_plan as dp
from sgt_data import hub_download as hd
from tests.support import hub_repo, olah, proxy

pytestmark = pytest.mark.integration
REPO_ID = "org/blobs"
BIG = "data/big.tar"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if olah.find_olah_cli() is None:
        pytest.skip("olah not installed: python -m venv .venv-olah && .venv-olah/bin/pip install olah==0.5.4")
    root = tmp_path_factory.mktemp("hub")
    payload = os.urandom(6_000_000)
    repo = hub_repo.build_repo(
        root / "mirrors", REPO_ID, {BIG: payload, "data/small.tar": b"s" * 1000, "README.md": b"# card\n"}
    )
    with olah.running_olah(root / "mirrors", root / "olah") as srv:
        yield srv, repo, payload


@pytest.fixture()
def link(server):
    with proxy.RecordingProxy(server[0].url) as px:
        yield px


def _listing(url: str) -> hd.RepoListing:
    return hd.list_repo(url, REPO_ID, "dataset", "main", token="hf_testtoken0000000000")


def test_listing_carries_lfs_sha256_and_git_blob_ids(server):
    srv, repo, _ = server
    listing = _listing(srv.url)
    assert listing.commit == repo.commit
    by_path = {f.path: f for f in listing.files}
    assert by_path[BIG].sha256 == repo.files[BIG].sha256 and by_path[BIG].size == 6_000_000
    assert by_path["README.md"].sha256 is None and len(by_path["README.md"].git_sha1) == 40


def test_download_verifies_and_a_rerun_skips_verified_files(server, link, tmp_path):
    _, _, payload = server
    listing = _listing(link.url)
    paths = hd.download_all(listing, listing.files, tmp_path, progress=False)
    assert (tmp_path / BIG).read_bytes() == payload and len(paths) == 3
    assert not any((tmp_path / hd.PARTIAL_DIR).rglob("*.part"))
    before = len(link.requests_for("/resolve/"))
    hd.download_all(listing, listing.files, tmp_path, progress=False)
    assert len(link.requests_for("/resolve/")) == before  # stamps: nothing fetched, nothing re-hashed


def test_connection_killed_mid_file_resumes_with_range(server, link, tmp_path):
    _, _, payload = server
    listing = _listing(link.url)
    link.cut(BIG, after_bytes=2_500_000)
    big = [f for f in listing.files if f.path == BIG]
    hd.download_all(listing, big, tmp_path, progress=False, retries=2)
    gets = link.requests_for(BIG)
    assert [g.range for g in gets] == [None, "bytes=2500000-"]
    assert (tmp_path / BIG).read_bytes() == payload


def test_rerun_resumes_the_partial_file_left_by_a_failed_run(server, link, tmp_path):
    _, _, payload = server
    listing = _listing(link.url)
    big = [f for f in listing.files if f.path == BIG]
    link.cut(BIG, after_bytes=1_000_000)
    with pytest.raises(hd.DownloadError, match="rerun the same command to resume"):
        hd.download_all(listing, big, tmp_path, progress=False, retries=0)
    assert hd.partial_path(tmp_path, BIG).stat().st_size == 1_000_000
    plan = dp.make_plan(big, tmp_path, free_bytes=10**12)
    assert (plan.partial_bytes, plan.fetch_bytes) == (1_000_000, 5_000_000)
    hd.download_all(listing, big, tmp_path, progress=False, retries=0)
    assert link.requests_for(BIG)[-1].range == "bytes=1000000-"
    assert (tmp_path / BIG).read_bytes() == payload


def test_server_ignoring_range_restarts_the_file(server, tmp_path):
    srv, _, payload = server  # olah's local-mirror route always answers 200 with the whole file
    listing = _listing(srv.url)
    big = [f for f in listing.files if f.path == BIG]
    part = hd.partial_path(tmp_path, BIG)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # garbage prefix: must be replaced, not kept
    hd.download_all(listing, big, tmp_path, progress=False)
    assert (tmp_path / BIG).read_bytes() == payload


def test_damaged_transfer_is_fetched_once_more(server, link, tmp_path):
    _, _, payload = server
    listing = _listing(link.url)
    link.corrupt(BIG, times=1)
    hd.download_all(listing, [f for f in listing.files if f.path == BIG], tmp_path, progress=False)
    assert len(link.requests_for(BIG)) == 2
    assert (tmp_path / BIG).read_bytes() == payload


def test_file_altered_on_the_server_fails_naming_it(tmp_path):
    if olah.find_olah_cli() is None:
        pytest.skip("olah not installed")
    repo = hub_repo.build_repo(tmp_path / "mirrors", REPO_ID, {"data/x.tar": b"original bytes" * 100})
    hub_repo.replace_lfs_blob(repo, "data/x.tar", b"tampered bytes" * 100)  # same size, other content
    with olah.running_olah(tmp_path / "mirrors", tmp_path / "olah") as srv:
        listing = _listing(srv.url)
        with pytest.raises(hd.DownloadError, match=r"data/x\.tar: downloaded twice and still does not match"):
            hd.download_all(listing, listing.files, tmp_path / "dl", progress=False)
        log = [p for m, p, s in srv.access_log() if m == "GET" and p.endswith("/data/x.tar")]
        assert len(log) == 2
    assert not (tmp_path / "dl" / "data" / "x.tar").exists()


def test_plan_fails_when_disk_is_too_small(server, tmp_path, monkeypatch):
    listing = _listing(server[0].url)
    monkeypatch.setenv(dp.FREE_BYTES_ENV, "1000000")
    plan = dp.make_plan(listing.files, tmp_path, extra_bytes=6_000_000)
    assert plan.free_bytes == 1_000_000 and plan.fetch_bytes == sum(f.size for f in listing.files)
    with pytest.raises(dp.InsufficientSpace, match="not enough disk") as err:
        dp.check_space(plan)
    assert "--shards" in str(err.value)
    dp.check_space(dp.make_plan(listing.files, tmp_path, free_bytes=10**9))


def test_http_errors_name_the_file_and_do_not_retry(server, tmp_path):
    listing = _listing(server[0].url)
    listing.repo_id = "org/not-there"  # olah answers 4xx for an unknown repo (500 for an unknown path)
    ghost = hd.RemoteFile("data/missing.tar", 10, sha256="0" * 64)
    with pytest.raises(hd.DownloadError, match=r"data/missing\.tar: HTTP 4\d\d") as err:
        hd.download_file(listing.url(ghost.path), tmp_path, ghost, retries=3, backoff=5.0)
    assert "retries" not in str(err.value)


def test_listing_errors_are_actionable_and_never_show_the_token(server):
    token = "hf_secretsecretsecret123"
    with pytest.raises(hd.DownloadError) as err:
        hd.list_repo(server[0].url, "org/does-not-exist", token=token)
    assert "org/does-not-exist" in str(err.value) and token not in str(err.value)


def _serve(handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_token_goes_to_the_hub_but_never_to_the_host_it_redirects_to(tmp_path):
    body = b"cdn bytes" * 50
    seen: dict[str, str | None] = {}

    class Cdn(BaseHTTPRequestHandler):
        def do_GET(self):
            seen["cdn"] = self.headers.get("Authorization")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    cdn = _serve(Cdn)

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):
            seen["hub"] = self.headers.get("Authorization")
            self.send_response(302)  # like the Hub sending LFS downloads to its CDN (another host)
            self.send_header("Location", f"http://localhost:{cdn.server_address[1]}/blob")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    hub = _serve(Hub)
    try:
        f = hd.RemoteFile("x.tar", len(body), sha256=hashlib.sha256(body).hexdigest())
        url = f"http://127.0.0.1:{hub.server_address[1]}/datasets/o/r/resolve/abc/x.tar"
        hd.download_file(url, tmp_path, f, headers={"Authorization": "Bearer hf_secret000000000000"})
    finally:
        hub.shutdown()
        cdn.shutdown()
    assert seen == {"hub": "Bearer hf_secret000000000000", "cdn": None}
    assert (tmp_path / "x.tar").read_bytes() == body

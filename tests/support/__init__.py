"""Reusable test support for download tests against a real local Hub-compatible server (olah) on loopback.

Three pieces, usable together or alone (stable API; other test modules rely on it):

* `hub_repo.build_repo(mirrors_path, repo_id, files, lfs=...)` makes a git repository in olah's mirrors layout
  (`<mirrors_path>/<datasets|models>/<org>/<name>`), committing LFS files as pointer files with their blobs under
  `.git/lfs/objects` (olah serves those without git-lfs). `replace_lfs_blob(...)` alters a blob on the "server
  side" while the pointer keeps the old oid/size (for corruption tests).
* `olah.running_olah(mirrors_path, workdir)` is a context manager that starts `olah-cli` in offline mode on
  127.0.0.1 (free port), waits (bounded) until it answers, yields an `OlahServer` (`.url`, `.access_log()`), and
  stops it by its PID. `olah.find_olah_cli()` says where olah is (or None: tests then skip with the reason).
* `proxy.RecordingProxy(upstream_url)` is a loopback HTTP proxy in front of olah that records every request
  (method, path, Range header), can serve byte ranges (olah's local-mirror route ignores `Range`, the Hub's CDN
  honours it), cut a response after N bytes, or corrupt one response: faults a real link has.

Typical module fixture::

    from tests.support import hub_repo, olah

    @pytest.fixture(scope="module")
    def hub(tmp_path_factory):
        root = tmp_path_factory.mktemp("hub")
        hub_repo.build_repo(root / "mirrors", "org/name", {"data/x.tar": tar_bytes, "README.md": b"hi"},
                            lfs=("*.tar",))
        with olah.running_olah(root / "mirrors", root / "olah") as server:
            yield server          # point clients at server.url (HF_HUB_DISABLE_XET=1)

olah is installed in its own virtualenv (its dependencies downgrade packages our venv pins):
`python -m venv .venv-olah && .venv-olah/bin/pip install olah==0.5.4`; `SGT_OLAH_CLI` may name another binary.
"""

"""A strict in-memory Hub for upload tests: what `huggingface_hub` 2.x sends with Xet off, and nothing else.

No writable Hub server runs offline (spec/data.md §7), so this one implements the upload protocol of §6.6 and the
reads `datasets.load_dataset` needs, on 127.0.0.1 with an ephemeral port. It is strict on purpose: malformed JSON,
wrong shapes, bad base64 samples, a PUT whose bytes do not hash to its oid, an NDJSON commit that names an LFS object
never uploaded, an unknown repo or revision, or a missing token all get a clear 4xx, and every request is logged so
tests can assert what was (not) sent. Unknown routes are 404 and recorded in `unknown_routes`.

Knobs: `put_faults`, consumed one per LFS PUT: "pass", "drop" (read half the body, then close the socket without
an answer) or "block" (read half, set `blocked`, hold until `release` is set, bounded by `block_timeout`, then
drop); `fail_routes` ({route name: n}: answer the next n requests of that route with 503).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"datasets": "dataset", "models": "model", "spaces": "space"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
LFS_SUFFIXES = (".parquet", ".tar", ".png", ".jpg", ".arrow", ".bin")


class HubError(Exception):
    """A 4xx answer: status, message, and the `X-Error-Code` huggingface_hub maps to its error classes."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Entry:
    """A committed file: regular files keep their bytes; LFS files point at an object in the LFS store."""

    size: int
    content: bytes | None = None
    sha256: str | None = None

    @property
    def oid(self) -> str:
        return git_blob_oid(self.content if self.sha256 is None else lfs_pointer(self.sha256, self.size))

    def info(self, path: str) -> dict:
        out = {"type": "file", "path": path, "size": self.size, "oid": self.oid}
        if self.sha256 is not None:
            out["lfs"] = {
                "oid": self.sha256,
                "size": self.size,
                "pointerSize": len(lfs_pointer(self.sha256, 0)),
            }
        return out


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[tuple[str, str, dict[str, Entry]]] = field(default_factory=list)  # (oid, title, files)

    def files(self, revision: str) -> tuple[str, dict[str, Entry]]:
        if revision == "main":
            return self.commits[-1][0], self.commits[-1][2]
        for oid, _, files in self.commits:
            if oid == revision:
                return oid, files
        raise HubError(404, f"Revision {revision!r} not found in {self.repo_id}", "RevisionNotFound")


def _new_oid() -> str:
    return secrets.token_hex(20)


class FakeHub(ThreadingHTTPServer):
    """The server and its state; `with FakeHub(token=...) as hub:` serves on `hub.url` in a daemon thread."""

    daemon_threads = True

    def __init__(self, token: str | None = None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.token = token
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.tickets: dict[str, tuple[str, int]] = {}
        self.log: list[tuple[str, str]] = []
        self.puts: list[str] = []  # oids whose PUT completed
        self.unknown_routes: list[str] = []
        self.put_faults: list[str] = []
        self.fail_routes: dict[str, int] = {}
        self.block_timeout = 30.0
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    def repo(self, kind: str, repo_id: str, auth: bool) -> Repo:
        repo = self.repos.get((kind, repo_id))
        if repo is None or (repo.private and not auth):
            raise HubError(404, f"Repository {kind}/{repo_id} not found", "RepoNotFound")
        return repo


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHub
    timeout = 60  # a stalled client cannot hold a thread forever

    def log_message(self, *args) -> None:  # keep test output clean; requests go to server.log
        pass

    # -- plumbing -------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        """The whole request body (Content-Length or chunked); read exactly once per request."""
        self._consumed = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self) -> dict:
        try:
            data = json.loads(self._body() or b"null")
        except ValueError as exc:
            raise HubError(400, f"request body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise HubError(400, "request body must be a JSON object")
        return data

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        """Answer with `body` (its length is announced; HEAD answers carry no body)."""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reply(self, data, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _authed(self) -> bool:
        want = self.server.token
        return want is None or self.headers.get("Authorization") == f"Bearer {want}"

    def _require_auth(self) -> None:
        if not self._authed():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.server.log.append((method, url.path))
        self._consumed = False
        try:
            for pattern, name in ROUTES:
                m = re.fullmatch(pattern, url.path)
                if m and hasattr(self, f"{name}_{method.lower()}"):
                    self._maybe_fail(name)
                    getattr(self, f"{name}_{method.lower()}")(*m.groups(), query=parse_qs(url.query))
                    return
            self.server.unknown_routes.append(f"{method} {url.path}")
            raise HubError(404, f"no route {method} {url.path}")
        except HubError as err:
            if not self._consumed:  # drain an unread body so the kept-alive connection stays in sync
                self._body()
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._reply({"error": err.message, **err.extra}, err.status, headers)

    def _maybe_fail(self, name: str) -> None:
        with self.server.lock:
            left = self.server.fail_routes.get(name, 0)
            self.server.fail_routes[name] = max(left - 1, 0)
        if left > 0:
            raise HubError(503, f"{name} temporarily unavailable (injected)")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # -- write API ------------------------------------------------------------------------------------------
    def create_post(self, query) -> None:
        self._require_auth()
        body = self._json()
        name, org, kind = body.get("name"), body.get("organization"), body.get("type", "model")
        if (
            not isinstance(name, str)
            or not NAME.match(name)
            or (org is not None and not NAME.match(str(org)))
        ):
            raise HubError(400, f"invalid repo name {org}/{name}")
        if kind not in REPO_TYPES.values() or body.get("visibility", "public") not in ("public", "private"):
            raise HubError(400, f"invalid type {kind!r} or visibility {body.get('visibility')!r}")
        repo_id = f"{org}/{name}" if org else name
        with self.server.lock:
            if (kind, repo_id) in self.server.repos:
                url = f"{self.server.url}/{kind}s/{repo_id}"
                raise HubError(409, f"You already created this {kind} repo", extra={"url": url})
            repo = Repo(repo_id, private=body.get("visibility") == "private" or body.get("private") is True)
            repo.commits.append((_new_oid(), "initial commit", {}))
            self.server.repos[(kind, repo_id)] = repo
        self._reply({"url": f"{self.server.url}/{kind}s/{repo_id}", "name": repo_id})

    def validate_yaml_post(self, query) -> None:
        body = self._json()
        content = body.get("content")
        if not isinstance(content, str) or body.get("repoType") not in REPO_TYPES.values():
            raise HubError(400, "validate-yaml needs {content: str, repoType: dataset|model|space}")
        self._reply({"errors": [{"message": m} for m in card_errors(content)], "warnings": []}, 200)

    def preupload_post(self, kind, repo_id, revision, query) -> None:
        self._require_auth()
        repo = self.server.repo(REPO_TYPES[kind], repo_id, True)
        _, files = repo.files(unquote(revision))
        items = self._json().get("files")
        if not isinstance(items, list) or not 0 < len(items) <= 256:
            raise HubError(400, "preupload needs 1..256 `files`")
        out = []
        for item in items:
            path, size, sample = item.get("path"), item.get("size"), item.get("sample")
            if not isinstance(path, str) or not isinstance(size, int) or not isinstance(sample, str):
                raise HubError(
                    400, f"preupload entry {item!r} needs path: str, size: int, sample: base64 str"
                )
            try:
                raw = base64.b64decode(sample, validate=True)
            except ValueError as exc:
                raise HubError(400, f"{path}: sample is not base64") from exc
            if len(raw) != min(size, 512):
                raise HubError(400, f"{path}: sample has {len(raw)} bytes, expected {min(size, 512)}")
            lfs = path.endswith(LFS_SUFFIXES) or b"\0" in raw or size > 10 * 2**20
            existing = files.get(path)
            oid = None if existing is None else (existing.sha256 or existing.oid)
            out.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._reply({"files": out})

    def lfs_batch_post(self, kind, repo_id, query) -> None:
        self._require_auth()
        self.server.repo(REPO_TYPES[kind], repo_id, True)
        if "git-lfs+json" not in self.headers.get("Content-Type", ""):
            raise HubError(400, "LFS batch needs Content-Type application/vnd.git-lfs+json")
        body = self._json()
        objects = body.get("objects")
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", []):
            raise HubError(400, "LFS batch: operation must be upload with the basic transfer")
        if body.get("hash_algo") != "sha256" or not isinstance(objects, list) or not objects:
            raise HubError(400, "LFS batch needs hash_algo sha256 and a non-empty objects list")
        out = []
        for obj in objects:
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not HEX64.match(oid) or not isinstance(size, int) or size < 0:
                raise HubError(400, f"LFS batch object {obj!r} needs a sha256 oid and an int size")
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.server.lfs:  # objects already stored need no upload (that is the resume)
                ticket = secrets.token_hex(8)
                self.server.tickets[ticket] = (oid, size)
                entry["actions"] = {"upload": {"href": f"{self.server.url}/lfs-upload/{ticket}"}}
            out.append(entry)
        self._reply(
            {"transfer": "basic", "objects": out}, headers={"Content-Type": "application/vnd.git-lfs+json"}
        )

    def lfs_put_put(self, ticket, query) -> None:
        if ticket not in self.server.tickets:
            raise HubError(403, "unknown or expired upload URL")
        oid, size = self.server.tickets[ticket]
        length = int(self.headers.get("Content-Length") or -1)
        if self._interrupt(length):
            return
        data = self._body()
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"uploaded bytes ({len(data)}) do not match oid {oid} / size {size}")
        with self.server.lock:
            self.server.lfs[oid] = data
            self.server.puts.append(oid)
            self.server.tickets.pop(ticket, None)
        self._send(200)

    def _interrupt(self, length: int) -> bool:
        """Apply the next `put_faults` entry: read half the body, then drop (or hold, then drop). True if so."""
        srv = self.server
        with srv.lock:
            fault = srv.put_faults.pop(0) if srv.put_faults else "pass"
        if fault == "pass":
            return False
        self.rfile.read(max(length // 2, 1))
        if fault == "block":
            srv.blocked.set()
            srv.release.wait(srv.block_timeout)
        self.close_connection = True
        self.connection.close()
        return True

    def commit_post(self, kind, repo_id, revision, query) -> None:
        self._require_auth()
        repo = self.server.repo(REPO_TYPES[kind], repo_id, True)
        if "create_pr" in query:
            raise HubError(400, "pull requests are not supported by this fake")
        if self.headers.get("Content-Type") != "application/x-ndjson":
            raise HubError(400, "commit body must be application/x-ndjson")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        head = lines[0] if lines else {}
        summary = head.get("value", {}).get("summary") if head.get("key") == "header" else None
        if not isinstance(summary, str) or not summary:
            raise HubError(400, "first NDJSON line must be {key: header, value: {summary, description}}")
        with self.server.lock:
            parent, files = repo.files(unquote(revision))
            if head["value"].get("parentCommit") not in (None, parent):
                raise HubError(412, "parentCommit is not the head of the branch")
            files = dict(files)
            for line in lines[1:]:
                apply_operation(files, line, self.server.lfs)
            if len(lines) < 2:
                raise HubError(400, "a commit needs at least one operation")
            oid = _new_oid()
            repo.commits.append((oid, summary, files))
        url = f"{self.server.url}/{kind}/{repo_id}/commit/{oid}"
        self._reply({"commitUrl": url, "commitOid": oid, "pullRequestUrl": None, "success": True})

    # -- read API -------------------------------------------------------------------------------------------
    def info_get(self, kind, repo_id, revision, query) -> None:
        repo = self.server.repo(REPO_TYPES[kind], repo_id, self._authed())
        sha, files = repo.files(unquote(revision or "main"))
        siblings = [{"rfilename": p} for p in sorted(files)]
        card = card_data(files.get("README.md"))
        self._reply(
            {
                "id": repo_id,
                "_id": repo_id,
                "sha": sha,
                "private": repo.private,
                "siblings": siblings,
                "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "cardData": card,
                "tags": [],
                "disabled": False,
                "gated": False,
            }
        )

    def tree_get(self, kind, repo_id, revision, path, query) -> None:
        repo = self.server.repo(REPO_TYPES[kind], repo_id, self._authed())
        _, files = repo.files(unquote(revision))
        recursive = query.get("recursive", ["False"])[0] == "True"
        self._reply(list_tree(files, unquote(path or "").strip("/"), recursive))

    def paths_info_post(self, kind, repo_id, revision, query) -> None:
        repo = self.server.repo(REPO_TYPES[kind], repo_id, self._authed())
        _, files = repo.files(unquote(revision))
        form = parse_qs(self._body().decode())
        folders = {p.rsplit("/", 1)[0] for p in files if "/" in p}
        out = []
        for path in form.get("paths", []):
            if path in files:
                out.append(files[path].info(path))
            elif path in folders:
                out.append({"type": "directory", "path": path, "oid": git_blob_oid(path.encode())})
        self._reply(out)

    def resolve_get(self, kind, repo_id, revision, path, query) -> None:
        repo = self.server.repo(REPO_TYPES[kind], repo_id, self._authed())
        sha, files = repo.files(unquote(revision))
        entry = files.get(unquote(path))
        if entry is None:
            raise HubError(404, f"{path} not found at {revision}", "EntryNotFound")
        data = entry.content if entry.sha256 is None else self.server.lfs[entry.sha256]
        etag = entry.sha256 or entry.oid
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if entry.sha256:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": entry.size})
        status, rng = 200, re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng:
            first, last = int(rng.group(1)), int(rng.group(2) or len(data) - 1)
            last = min(last, len(data) - 1)
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            data, status = data[first : last + 1], 206
        self._send(status, data, headers)

    resolve_head = resolve_get
    info_head = info_get

    def harnesses_get(self, query) -> None:
        """The client's best-effort agent-harness registry lookup: an empty registry."""
        self._reply({"standardEnvVars": [], "harnesses": {}})


def apply_operation(files: dict[str, Entry], line: dict, lfs: dict[str, bytes]) -> None:
    """One NDJSON operation line applied to a file map; anything malformed is a 400."""
    key, value = line.get("key"), line.get("value")
    path = value.get("path") if isinstance(value, dict) else None
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
        raise HubError(400, f"operation {line!r} needs a relative `path`")
    if key == "file":
        if value.get("encoding") != "base64":
            raise HubError(400, f"{path}: file content must be base64-encoded")
        try:
            content = base64.b64decode(value.get("content", ""), validate=True)
        except ValueError as exc:
            raise HubError(400, f"{path}: content is not base64") from exc
        files[path] = Entry(size=len(content), content=content)
    elif key == "lfsFile":
        oid, size = value.get("oid"), value.get("size")
        if value.get("algo") != "sha256" or not isinstance(oid, str) or not HEX64.match(oid):
            raise HubError(400, f"{path}: lfsFile needs algo sha256 and a sha256 oid")
        if oid not in lfs or len(lfs[oid]) != size:
            raise HubError(422, f"{path}: LFS object {oid} (size {size}) was never uploaded")
        files[path] = Entry(size=size, sha256=oid)
    elif key == "deletedFile":
        if files.pop(path, None) is None:
            raise HubError(404, f"{path}: A file with this name doesn't exist", "EntryNotFound")
    elif key == "deletedFolder":
        for p in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
            del files[p]
    else:
        raise HubError(400, f"unknown NDJSON operation key {key!r}")


def list_tree(files: dict[str, Entry], path: str, recursive: bool) -> list[dict]:
    """Entries under `path` (folders first-class, like the Hub), sorted; 404 for a path that does not exist."""
    prefix = f"{path}/" if path else ""
    below = sorted(p for p in files if p.startswith(prefix))
    if path and not below:
        raise HubError(404, f"{path} does not exist", "EntryNotFound")
    seen, out = set(), []
    for p in below:
        parts = p[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            folder = prefix + "/".join(parts[:depth])
            if folder not in seen and (recursive or depth == 1):
                seen.add(folder)
                out.append({"type": "directory", "path": folder, "oid": git_blob_oid(folder.encode())})
        if recursive or len(parts) == 1:
            out.append(files[p].info(p))
    return out


def card_data(entry: Entry | None) -> dict | None:
    if entry is None or entry.content is None:
        return None
    text = entry.content.decode()
    if not text.startswith("---\n"):
        return None
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


def card_errors(content: str) -> list[str]:
    """Strict checks of a dataset card header: YAML mapping; `configs` entries with names and data_files."""
    if not content.startswith("---\n") or "\n---" not in content[3:]:
        return ["README.md has no YAML header between --- lines"]
    try:
        meta = yaml.safe_load(content[4 : content.index("\n---", 4)])
    except yaml.YAMLError as exc:
        return [f"YAML does not parse: {exc}"]
    if not isinstance(meta, dict):
        return ["YAML header must be a mapping"]
    errors = []
    names = set()
    for cfg in meta.get("configs", []):
        name, files = cfg.get("config_name"), cfg.get("data_files")
        if not isinstance(name, str) or name in names:
            errors.append(f"config_name {name!r} missing or duplicated")
        names.add(name)
        ok = isinstance(files, list) and all(
            isinstance(f, dict) and isinstance(f.get("split"), str) and isinstance(f.get("path"), (str, list))
            for f in files
        )
        if not ok:
            errors.append(f"config {name}: data_files must be a list of {{split, path}}")
    for info in meta.get("dataset_info", []) if isinstance(meta.get("dataset_info"), list) else []:
        if info.get("config_name") not in names:
            errors.append(f"dataset_info for unknown config {info.get('config_name')!r}")
    return errors


_REPO = r"/(datasets|models|spaces)/([^/]+/[^/]+)"
ROUTES = [
    (r"/api/repos/create", "create"),
    (r"/api/validate-yaml", "validate_yaml"),
    (r"/api/agent-harnesses", "harnesses"),
    (r"/api" + _REPO + r"/preupload/([^/]+)", "preupload"),
    (r"/api" + _REPO + r"/commit/([^/]+)", "commit"),
    (r"/api" + _REPO + r"/paths-info/([^/]+)", "paths_info"),
    (r"/api" + _REPO + r"/tree/([^/]+)(?:/(.*))?", "tree"),
    (r"/api" + _REPO + r"(?:/revision/([^/]+))?", "info"),
    (_REPO + r"\.git/info/lfs/objects/batch", "lfs_batch"),
    (r"/lfs-upload/([0-9a-f]+)", "lfs_put"),
    (_REPO + r"/resolve/([^/]+)/(.+)", "resolve"),
]

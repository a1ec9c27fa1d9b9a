"""`sgt-data push DIR --repo-id ORG/NAME`: validated, resumable, memory-bounded upload with a generated card.

Not `Dataset.push_to_hub` (keeps every shard's bytes in memory, hangs on large image sets) nor `upload_folder`
(one giant commit without Xet), see spec/data.md §6.5. A push is a sequence of small idempotent *units*: for a
chunk of shards, ask the Hub which paths already hold the same sha256 (`get_paths_info`), pre-upload the rest as
LFS from their file paths (`preupload_lfs_files`, released after upload), then commit the chunk. A failed unit is
retried with bounded exponential backoff on 429 / 5xx / connection errors by re-planning it against the remote:
nothing that landed is sent twice (the LFS batch answer skips stored objects) and no commit is duplicated. A rerun
after a crash does the same; requests that go silent time out (`--timeout`) instead of hanging. README.md (the card) and manifest.json go last. sha256 sums are cached in
`DIR/.sgt-push.json` (by size + mtime) so a rerun of a 190 GB push does not re-hash it. The token comes from
`--token-env` or the login and is never printed; every message passes through `hub.redact`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sgt_data import hub

# The CLI sets HF_HUB_DISABLE_XET=1 before any HF import: uploads go through classic LFS on every endpoint.
HUB_DISABLE_XET = True

T = TypeVar("T")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
CACHE_NAME = ".sgt-push.json"


class PushError(RuntimeError):
    """A push that cannot go on; the message names the input and the fix."""


def add_arguments(parser) -> None:
    parser.add_argument(
        "folder", help="output folder of `sgt-data build ...` (checked with `validate` first)"
    )
    parser.add_argument("--repo-id", required=True, help="dataset repo to create or update, ORG/NAME")
    parser.add_argument(
        "--public",
        action="store_true",
        help="create the repo public (default: private; an existing repo keeps its visibility)",
    )
    parser.add_argument(
        "--allow-partial", action="store_true", help="push only the complete shards of a partial build"
    )
    parser.add_argument(
        "--path-in-repo", default="data", help="folder for the shards in the repo (default: data)"
    )
    parser.add_argument(
        "--files-per-commit", type=int, default=50, help="shards per commit (Hub advice: < 100)"
    )
    parser.add_argument(
        "--retries", type=int, default=6, help="attempts per unit on 429/5xx/connection errors"
    )
    parser.add_argument(
        "--retry-wait", type=float, default=2.0, help="first backoff in seconds (doubles, max 120)"
    )
    parser.add_argument("--threads", type=int, default=4, help="parallel LFS uploads within a unit")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds without progress before a request is retried"
    )
    hub.add_hub_arguments(parser, token_help="Hub token with write access (default: HF_TOKEN or your login)")


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    """sha256 of a file read in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(folder: Path, paths: list[Path]) -> dict[str, str]:
    """sha256 per shard name, reusing `DIR/.sgt-push.json` entries whose size and mtime still match."""
    cache_path = folder / CACHE_NAME
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    out = {}
    for path in paths:
        st = path.stat()
        hit = cache.get(path.name)
        if not (hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns):
            hit = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}
            cache[path.name] = hit
            tmp = cache_path.with_name(f"{CACHE_NAME}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(tmp, cache_path)
        out[path.name] = hit["sha256"]
    return out


def git_blob_oid(data: bytes) -> str:
    """The git blob id the Hub reports for a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_retryable(exc: BaseException) -> bool:
    """429/5xx answers and network failures anywhere in the exception chain are worth another try."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        if getattr(response, "status_code", None) in RETRY_STATUS:
            return True
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & {"TransportError", "TimeoutException", "ConnectionError", "RemoteProtocolError"}:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    try:
        return float(response.headers.get("Retry-After")) if response is not None else None
    except (TypeError, ValueError):
        return None


def with_retries(fn: Callable[[], T], what: str, attempts: int, wait: float, token: str | None) -> T:
    """Run `fn`; on a retryable failure wait (exponential, jittered, capped, Retry-After honoured) and rerun it."""
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not retryable
            if attempt >= attempts or not is_retryable(exc):
                raise
            delay = min(120.0, retry_after(exc) or wait * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
            message = hub.redact(f"{type(exc).__name__}: {exc}", token).splitlines()[0][:300]
            print(
                f"push: {what} failed ({message}); retry {attempt}/{attempts - 1} in {delay:.1f}s",
                file=sys.stderr,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def install_timeouts(seconds: float) -> None:
    """Give huggingface_hub's shared HTTP client read/write timeouts (its default is none at all).

    Without them a connection that stalls without being reset (the "bad link" case) blocks a push forever;
    with them the stalled request times out and is retried. Timeouts bound the silence between bytes, not a
    whole upload, so slow but moving transfers are not cut. The library's own client keeps its event hooks."""
    import huggingface_hub

    try:  # huggingface_hub 2.x builds on httpx2, 1.x on httpx; both expose set_client_factory
        import httpx2 as httpx
    except ImportError:
        import httpx
    if not hasattr(huggingface_hub, "set_client_factory"):
        print(
            f"sgt-data push: huggingface_hub {huggingface_hub.__version__} cannot take HTTP timeouts; a link that "
            "goes silent may hang the push (upgrade huggingface_hub to 1.31 or newer)",
            file=sys.stderr,
        )
        return
    template = huggingface_hub.get_session()
    hooks, redirects = template.event_hooks, template.follow_redirects
    timeout = httpx.Timeout(seconds, connect=min(seconds, 30.0))
    huggingface_hub.set_client_factory(
        lambda: httpx.Client(event_hooks=hooks, follow_redirects=redirects, timeout=timeout)
    )


def check_xet(endpoint: str) -> None:
    """Refuse a Xet upload to anything but the public Hub (hf_xet ignores custom endpoints, spec §6.3)."""
    from huggingface_hub import constants

    xet_on = not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None
    if xet_on and endpoint.rstrip("/") != hub.DEFAULT_ENDPOINT:
        raise PushError(
            f"hf_xet is active but the endpoint is {endpoint}; Xet would bypass it. Set HF_HUB_DISABLE_XET=1 "
            "before starting Python (the `sgt-data` CLI does this for push)"
        )


def remote_files(api, repo_id: str, paths: list[str]) -> dict[str, str]:
    """path -> sha256 (LFS files) or git blob id (regular files) for the `paths` that exist on the remote."""
    out: dict[str, str] = {}
    for start in range(0, len(paths), 100):
        for entry in api.get_paths_info(repo_id, paths[start : start + 100], repo_type="dataset"):
            lfs = getattr(entry, "lfs", None)
            if lfs is not None:
                out[entry.path] = lfs.sha256
            elif hasattr(entry, "blob_id"):
                out[entry.path] = entry.blob_id
    return out


class Pusher:
    """One push: the plan (local files + their hashes) and the units that upload it."""

    def __init__(self, args, api, token: str | None):
        self.args, self.api, self.token = args, api, token
        self.repo_id = args.repo_id
        self.sent = 0

    def retry(self, fn: Callable[[], T], what: str) -> T:
        return with_retries(fn, what, self.args.retries, self.args.retry_wait, self.token)

    def unit(self, files: dict[str, Path | bytes], hashes: dict[str, str], message: str) -> int:
        """Upload + commit what of `files` (repo path -> local path or bytes) the remote lacks; returns count sent."""
        from huggingface_hub import CommitOperationAdd

        remote = remote_files(self.api, self.repo_id, list(files))
        todo = [p for p in files if remote.get(p) != hashes[p]]
        if not todo:
            return 0
        ops = []
        for path in todo:
            source = files[path]
            op = CommitOperationAdd(
                path_in_repo=path, path_or_fileobj=source if isinstance(source, bytes) else str(source)
            )
            if not isinstance(source, bytes):
                op.upload_info.sha256 = bytes.fromhex(hashes[path])  # hashed once, cached across runs
            ops.append(op)
        self.api.preupload_lfs_files(
            self.repo_id, additions=ops, repo_type="dataset", num_threads=self.args.threads, free_memory=True
        )
        self.api.create_commit(self.repo_id, ops, commit_message=message, repo_type="dataset")
        return len(todo)

    def push_shards(self, folder: Path, shards: list[Path]) -> list[str]:
        """Commit the shards chunk by chunk (hashing each chunk just before it goes); returns their repo paths."""
        prefix = self.args.path_in_repo.strip("/")
        repo_paths = [f"{prefix}/{p.name}" if prefix else p.name for p in shards]
        per = max(1, self.args.files_per_commit)
        chunks = [list(range(i, min(i + per, len(shards)))) for i in range(0, len(shards), per)]
        for n, chunk in enumerate(chunks, 1):
            hashes = cached_sha256(folder, [shards[i] for i in chunk])
            files = {repo_paths[i]: shards[i] for i in chunk}
            sums = {repo_paths[i]: hashes[shards[i].name] for i in chunk}
            message = f"Add {shards[chunk[0]].name}..{shards[chunk[-1]].name} ({n}/{len(chunks)})"
            sent = self.retry(
                lambda f=files, s=sums, m=message: self.unit(f, s, m), f"commit {n}/{len(chunks)}"
            )
            self.sent += sent
            print(f"push: commit {n}/{len(chunks)}: {sent} sent, {len(chunk) - sent} already on the Hub")
        return repo_paths


def _fail(message: str, token: str | None) -> int:
    print(f"sgt-data push: {hub.redact(message, token)}", file=sys.stderr)
    return 1


def run(args) -> int:
    """Validate, create the repo, push shards in committed chunks, then the card and manifest."""
    endpoint = None if args.mirror else hub.resolve_endpoint(args.endpoint)  # --mirror is refused in _push
    token = hub.get_token(args.token_env, endpoint)
    try:
        return _push(args, token)
    except PushError as exc:
        return _fail(str(exc), token)
    except Exception as exc:  # noqa: BLE001 - Hub and disk errors: say what failed and what to do, no token
        return _fail(explain(exc, args), token)


def explain(exc: BaseException, args) -> str:
    """An error message with the fix: token problems, a missing repo, or a link that kept failing."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return (
            f"the Hub refused the token (HTTP {status}) for {args.repo_id}: set {args.token_env} to a token with "
            f"write access to that namespace, or run `hf auth login`\n{exc}"
        )
    if status == 404:
        return f"{args.repo_id} or its main branch was not found (HTTP 404); check --repo-id and the token\n{exc}"
    if is_retryable(exc):
        return (
            f"{type(exc).__name__}: {exc}\ngave up after {args.retries} attempts; rerun the same command to "
            "resume: files already on the Hub are skipped"
        )
    return f"{type(exc).__name__}: {exc}"


def _push(args, token: str | None) -> int:
    from sgt_data.validate import validate

    if args.mirror:
        raise PushError(
            "--mirror: hf-mirror.com is download-only; push to the Hub or to a server given by --endpoint"
        )
    endpoint = hub.resolve_endpoint(args.endpoint, args.mirror)
    folder = Path(args.folder)
    report = validate(folder)
    if report.errors or (report.partial and not args.allow_partial) or report.manifest is None:
        hint = "" if report.errors else "\npass --allow-partial to push only the complete shards"
        return _fail(f"{report.summary()}{hint}", token)
    print(f"push: validate {folder}: {len(report.complete_shards)} shards, {report.rows} rows")
    if not token:
        raise PushError(
            f"no Hub token: set {args.token_env} or run `hf auth login` (write access to {args.repo_id})"
        )
    check_xet(endpoint)
    install_timeouts(args.timeout)
    api = hub.api(endpoint, token)
    pusher = Pusher(args, api, token)
    url = pusher.retry(
        lambda: api.create_repo(args.repo_id, repo_type="dataset", private=not args.public, exist_ok=True),
        "create repo",
    )
    print(f"push: repo {url} ({'public' if args.public else 'private'})")
    data_files = pusher.push_shards(folder, report.complete_shards)
    extras = final_files(report, args, data_files, token)
    sums = {path: git_blob_oid(data) for path, data in extras.items()}
    pusher.sent += pusher.retry(lambda: pusher.unit(extras, sums, "Update dataset card and manifest"), "card")
    print(f"push: done, {pusher.sent} file(s) sent; {url}")
    stale = pusher.retry(lambda: stale_shards(api, args.repo_id, data_files), "listing")
    if stale:
        print(
            f"push: note: {len(stale)} shard(s) on the Hub are not in this build and not in the card "
            f"(e.g. {stale[0]}); if they are leftovers: `hf repos delete-files {args.repo_id} --type dataset PATH...`",
            file=sys.stderr,
        )
    return 0


def stale_shards(api, repo_id: str, data_files: list[str]) -> list[str]:
    """Shard files in the remote shard folder(s) that this push did not write (an older, bigger build)."""
    folders = sorted({p.rpartition("/")[0] for p in data_files})
    keep, out = set(data_files), []
    for folder in folders:
        for entry in api.list_repo_tree(repo_id, path_in_repo=folder or None, repo_type="dataset"):
            if entry.path.endswith(".parquet") and entry.path not in keep:
                out.append(entry.path)
    return sorted(out)


def final_files(report, args, data_files: list[str], token: str | None) -> dict[str, bytes]:
    """README.md (rendered card) and manifest.json, with the token scrubbed should it ever appear in them."""
    import pyarrow.parquet as pq

    from sgt_data.card import render_card

    schema = pq.read_schema(report.complete_shards[0])
    categories: Counter = Counter()
    if "category" in schema.names:
        for path in report.complete_shards:  # the category configs hold `ok` rows only: count those
            table = pq.read_table(path, columns=["category", "status"]).to_pydict()
            categories.update(
                c for c, st in zip(table["category"], table["status"], strict=True) if st == "ok"
            )
    categories.pop(None, None)
    command = ["sgt-data", "push", str(args.folder), "--repo-id", args.repo_id]
    command += ["--public"] * args.public + ["--allow-partial"] * args.allow_partial
    command += ["--path-in-repo", args.path_in_repo] if args.path_in_repo != "data" else []
    card = render_card(
        report.manifest,
        repo_id=args.repo_id,
        schema=schema,
        data_files=data_files,
        categories=dict(categories),
        push_command=command,
    )
    manifest = json.dumps(report.manifest, indent=2, sort_keys=True, default=str) + "\n"
    return {"README.md": scrub(card, token).encode(), "manifest.json": scrub(manifest, token).encode()}


def scrub(text: str, token: str | None) -> str:
    """`text` without the token (exact match only, so ordinary text is never rewritten)."""
    if token and token in text:
        print("push: warning: the token appeared in the card/manifest and was removed", file=sys.stderr)
        return text.replace(token, "***")
    return text

"""ov_bytes: bytes fetched per byte kept by `sgt-data build llava-ov`, vs the reference approach (whole configs).

    python benchmarks/ov_bytes.py            # ~120k rows in 3 configs, ~2% / 22% / 2.3% sampled
    python benchmarks/ov_bytes.py --quick    # a tenth of the rows

A LLaVA-OV-shaped repo is built here (hub_repo layout: git + LFS pointers) and served by olah on loopback, behind
a small Range-honouring counting proxy (olah's local-mirror route ignores `Range`; the Hub's CDN honours it).
Row groups are sized like the real dataset (image configs: 100 rows per group, as `datasets` writes image
Parquet; text-only: 1000), images are small noise JPEGs. Three runs in the same process, counted at the proxy
(every response byte, API listings included):

* ours: `sgt-data build llava-ov --endpoint <proxy>` with the default fetch budget;
* ours, `--exact` (simple random sample: fetches every row group holding a sampled row);
* reference: `snapshot_download` of every config folder, then a seeded `random.sample` of rows (what
  `load_dataset(config)` + sampling fetches).

Prints each approach's fetched / kept and `RESULT ov_bytes <ours fetched/kept>` (target <= 1.5).
"""

from __future__ import annotations

import argparse
import http.client
import io
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REPO_ID = "bench/LLaVA-OneVision-Data"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CONV_TYPE = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
SCHEMA = pa.schema(
    [("id", pa.string()), ("image", IMAGE_TYPE), ("conversations", CONV_TYPE), ("data_source", pa.string())]
)


class RangeProxy:
    """Loopback proxy in front of a Hub-compatible server: answers `Range: bytes=a-b` / `bytes=a-` with 206 and
    the slice (as the Hub's CDN does), and counts every response body byte it sends."""

    def __init__(self, upstream: str, timeout: float = 60.0):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.timeout = timeout
        self.sent = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._bodies: dict[str, tuple[int, list, bytes]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RangeProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.sent, self.requests = 0, 0

    def _forward(self, method: str, path: str, incoming, hop: set[str]) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=self.timeout)
        headers = {k: v for k, v in incoming.items() if k.lower() not in hop}
        headers["Host"] = self.upstream.netloc
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            data = resp.read() if method != "HEAD" else b""
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in hop]
            if method == "HEAD":
                out.append(("X-Head-Length", resp.getheader("content-length", "0")))
            return resp.status, out, data
        finally:
            conn.close()

    def _handler(self):
        proxy = self
        hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "range"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self) -> None:
                cached = proxy._bodies.get(self.path) if self.command == "GET" else None
                if cached is None:
                    cached = proxy._forward(self.command, self.path, self.headers, hop)
                    if self.command == "GET" and cached[0] == 200 and "/resolve/" in self.path:
                        proxy._bodies[self.path] = cached  # olah re-reads whole blobs per request: keep them
                status, out, data = cached
                out = list(out)
                rng = self.headers.get("Range", "")
                if self.command == "GET" and status == 200 and rng.startswith("bytes="):
                    first, _, last = rng[6:].partition("-")
                    start, end = int(first), min(int(last) + 1 if last else len(data), len(data))
                    out.append(("Content-Range", f"bytes {start}-{end - 1}/{len(data)}"))
                    status, data = 206, data[start:end]
                with proxy._lock:
                    proxy.sent += len(data)
                    proxy.requests += 1
                self.send_response(status)
                length = str(len(data))
                for k, v in out:
                    if k == "X-Head-Length":  # HEAD: announce the upstream length, send no body
                        length = v
                        continue
                    self.send_header(k, v.replace(proxy.upstream.netloc, self.headers.get("Host", "")))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = _serve

        return Handler


def noise_jpeg(rng: np.random.Generator, size: int) -> bytes:
    import cv2

    img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


def parquet_bytes(rows: list[dict], row_group: int) -> bytes:
    """One Parquet file of LLaVA-OV rows (id, image struct, conversations, data_source)."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf, row_group_size=row_group)
    return buf.getvalue()


def config_files(name: str, rows: list[dict], files: int, row_group: int) -> dict[str, bytes]:
    """`<config>/train-0000N-of-0000M.parquet` for a config's rows split into `files` files."""
    per = -(-len(rows) // files)
    return {
        f"{name}/train-{i:05d}-of-{files:05d}.parquet": parquet_bytes(
            rows[i * per : (i + 1) * per], row_group
        )
        for i in range(files)
    }


def image_rows(name: str, n: int, seed: int, size: int = 48) -> list[dict]:
    rng = np.random.default_rng(seed)
    conv = [{"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": "Noise."}]
    return [
        {
            "id": f"{name}-{i}",
            "image": {"bytes": noise_jpeg(rng, size), "path": None},
            "conversations": conv,
            "data_source": name,
        }
        for i in range(n)
    ]


def text_rows(name: str, n: int, seed: int, chars: int = 900) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words, size=chars // 6))
        conv = [{"from": "human", "value": f"Q{i}: {text[:80]}"}, {"from": "gpt", "value": text}]
        out.append({"id": f"{name}-{i}", "image": None, "conversations": conv, "data_source": name})
    return out


BENCH_SPEC = """\
repo_id: {repo}
seed: 7
rows_per_shard: 500
total: {total}
categories:
  Doc_Chart_Screen:
    total: {doc}
    configs:
      "dvqa(cauldron,llava_format)": {dvqa}
      "chartqa(cauldron,llava_format)": {chartqa}
  Language:
    total: {lang}
    configs:
      "magpie_pro(l3_80b_st)": {lang}
"""


def build_bench_repo(mirrors: Path, scale: float) -> dict[str, int]:
    """The benchmark repo; returns {config: rows to sample} (the real sampling rates of dvqa, chartqa, magpie)."""
    from tests.support.hub_repo import build_repo

    n = {
        "dvqa(cauldron,llava_format)": int(20000 * scale),
        "chartqa(cauldron,llava_format)": int(4000 * scale),
        "magpie_pro(l3_80b_st)": int(30000 * scale),
    }
    files: dict[str, bytes] = {"README.md": b"# benchmark repo\n"}
    files |= config_files(
        "dvqa(cauldron,llava_format)", image_rows("dvqa", n["dvqa(cauldron,llava_format)"], 1), 4, 100
    )
    files |= config_files(
        "chartqa(cauldron,llava_format)",
        image_rows("chartqa", n["chartqa(cauldron,llava_format)"], 2),
        2,
        100,
    )
    files |= config_files(
        "magpie_pro(l3_80b_st)", text_rows("magpie", n["magpie_pro(l3_80b_st)"], 3), 3, 1000
    )
    build_repo(mirrors, REPO_ID, files)
    rates = {
        "dvqa(cauldron,llava_format)": 0.02,
        "chartqa(cauldron,llava_format)": 0.22,
        "magpie_pro(l3_80b_st)": 0.0233,
    }
    return {c: max(1, round(n[c] * rates[c])) for c in n}


def payload(table: pa.Table) -> int:
    """Image bytes + conversation text bytes of a table's rows (the same measure `build llava-ov` records)."""
    total = 0
    for rec in table.select(["image", "conversations"]).to_pylist():
        total += len((rec["image"] or {}).get("bytes") or b"")
        total += sum(len(t["value"].encode()) for t in rec["conversations"] or [])
    return total


def run_ours(url: str, spec: Path, out: Path, exact: bool) -> int:
    """Our command in a subprocess (its own local Ray); returns the bytes kept it recorded."""
    import json

    cmd = [
        sys.executable,
        "-m",
        "sgt_data.cli",
        "build",
        "llava-ov",
        "--endpoint",
        url,
        "--pipeline",
        str(spec),
        "--output",
        str(out),
        "--num-cpus",
        "2",
        "--no-progress",
    ] + (["--exact"] if exact else [])
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_TOKEN": "hf_dummytokenforbench",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "HOME": str(out.parent),
    }
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"build failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((out / "manifest.json").read_text())["bytes"]["kept"]


def run_reference(url: str, quotas: dict[str, int], work: Path, seed: int = 42) -> int:
    """Whole configs via snapshot_download, then a seeded row sample per config; returns bytes kept."""
    from huggingface_hub import snapshot_download

    local = Path(
        snapshot_download(
            REPO_ID,
            repo_type="dataset",
            endpoint=url,
            token="hf_dummytokenforbench",
            local_dir=work / "ref",
            allow_patterns=[f"{c}/*" for c in quotas],
        )
    )
    random.seed(seed)
    kept = 0
    for config, n in quotas.items():
        table = pa.concat_tables(pq.read_table(p) for p in sorted((local / config).glob("*.parquet")))
        kept += payload(table.take(sorted(random.sample(range(table.num_rows), n))))
    return kept


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the rows")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    import os

    os.environ["HF_HUB_DISABLE_XET"] = "1"
    from tests.support.olah import running_olah

    scale = args.scale * (0.1 if args.quick else 1.0)
    with tempfile.TemporaryDirectory(prefix="ov_bytes-") as tmp:
        work = Path(tmp)
        t0 = time.time()
        quotas = build_bench_repo(work / "mirrors", scale)
        spec = work / "bench.yaml"
        doc = quotas["dvqa(cauldron,llava_format)"] + quotas["chartqa(cauldron,llava_format)"]
        lang = quotas["magpie_pro(l3_80b_st)"]
        spec.write_text(
            BENCH_SPEC.format(
                repo=REPO_ID,
                total=doc + lang,
                doc=doc,
                lang=lang,
                dvqa=quotas["dvqa(cauldron,llava_format)"],
                chartqa=quotas["chartqa(cauldron,llava_format)"],
            )
        )
        repo_bytes = sum(p.stat().st_size for p in (work / "mirrors").rglob("objects/*/*/*"))
        print(
            f"repo: {repo_bytes / 1e6:.1f} MB in LFS blobs, quotas {quotas} (built in {time.time() - t0:.0f}s)"
        )
        results = {}
        with running_olah(work / "mirrors", work / "olah") as server, RangeProxy(server.url) as proxy:
            for label, exact in (("ours", False), ("ours --exact", True)):
                proxy.reset()
                kept = run_ours(proxy.url, spec, work / label.replace(" ", "_"), exact)
                results[label] = (proxy.sent, kept, proxy.requests)
            proxy.reset()
            kept = run_reference(proxy.url, quotas, work)
            results["reference"] = (proxy.sent, kept, proxy.requests)
    for label, (sent, kept, reqs) in results.items():
        print(
            f"{label:>14}: fetched {sent / 1e6:9.2f} MB in {reqs:5d} requests, kept {kept / 1e6:7.2f} MB,"
            f" fetched/kept {sent / kept:6.2f}x"
        )
    ratio = results["ours"][0] / results["ours"][1]
    print(f"RESULT ov_bytes {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()

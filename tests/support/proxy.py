"""A loopback HTTP proxy in front of a test server: records every request and injects link faults on demand.

Point the client at `proxy.url` instead of the server. Every request is recorded as a `Seen` (method, path,
Range header), which lets a test prove that all traffic went to the endpoint it was given. Faults, each armed for
a number of matching requests (substring match on the path):

* `cut(path_part, after_bytes, times)`: send the headers and `after_bytes` of the body, then drop the connection
  (a link that dies mid-file);
* `corrupt(path_part, times)`: flip one byte in the middle of the body (bytes damaged in transit);
* `serve_ranges=True`: answer `Range: bytes=N-` with 206 + the tail, as the Hub's CDN does (olah's local-mirror
  route ignores Range and always sends the whole file).

Bodies are buffered whole (test files are small). Bounded: upstream calls time out after `timeout` seconds.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
    "upgrade",
    "te",
}
_RANGE = re.compile(r"bytes=(\d+)-$")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None


class RecordingProxy:
    """Threaded proxy on 127.0.0.1 (free port) forwarding to `upstream` (http://host:port)."""

    def __init__(self, upstream: str, serve_ranges: bool = True, timeout: float = 30.0):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.serve_ranges = serve_ranges
        self.timeout = timeout
        self.seen: list[Seen] = []
        self._faults: list[list] = []  # [kind, path_part, remaining, arg]
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def cut(self, path_part: str, after_bytes: int, times: int = 1) -> None:
        with self._lock:
            self._faults.append(["cut", path_part, times, after_bytes])

    def corrupt(self, path_part: str, times: int = 1) -> None:
        with self._lock:
            self._faults.append(["corrupt", path_part, times, None])

    def requests_for(self, path_part: str, method: str = "GET") -> list[Seen]:
        return [s for s in self.seen if path_part in s.path and s.method == method]

    def _take_fault(self, path: str) -> tuple[str, int | None] | None:
        with self._lock:
            for fault in self._faults:
                if fault[2] > 0 and fault[1] in path:
                    fault[2] -= 1
                    return fault[0], fault[3]
        return None

    def _forward(self, method: str, path: str, headers: dict, body: bytes | None):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read() if method != "HEAD" else b""
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the record is `proxy.seen`
                pass

            def _serve(self) -> None:
                rng = self.headers.get("Range")
                with proxy._lock:
                    proxy.seen.append(Seen(self.command, self.path, rng))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fwd = {k: v for k, v in self.headers.items() if k.lower() not in _HOP | {"host", "range"}}
                fwd["Host"] = proxy.upstream.netloc
                status, headers, data = proxy._forward(self.command, self.path, fwd, body)
                out_headers = [(k, v) for k, v in headers if k.lower() not in _HOP]
                out_headers = [
                    (k, self._rewrite(v) if k.lower() == "location" else v) for k, v in out_headers
                ]
                total = len(data)
                m = _RANGE.match(rng or "")
                if m and status == 200 and proxy.serve_ranges and self.command == "GET":
                    start = int(m.group(1))
                    if start >= total:
                        status, data = 416, b""
                        out_headers.append(("Content-Range", f"bytes */{total}"))
                    else:
                        status, data = 206, data[start:]
                        out_headers.append(("Content-Range", f"bytes {start}-{total - 1}/{total}"))
                fault = (
                    proxy._take_fault(self.path) if self.command == "GET" and status in (200, 206) else None
                )
                if fault and fault[0] == "corrupt" and data:
                    mid = len(data) // 2
                    data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
                self.send_response(status)
                for k, v in out_headers:
                    self.send_header(k, v)
                self.send_header(
                    "Content-Length", str(len(data) if self.command != "HEAD" else _head_len(headers))
                )
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault and fault[0] == "cut":
                    self.wfile.write(data[: fault[1]])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def _rewrite(self, location: str) -> str:
                # Redirects that name the upstream server must keep pointing at the proxy.
                return location.replace(proxy.upstream.netloc, f"127.0.0.1:{proxy.port}")

            do_GET = do_HEAD = do_POST = _serve

        return Handler


def _head_len(headers: list[tuple[str, str]]) -> str:
    for k, v in headers:
        if k.lower() == "content-length":
            return v
    return "0"

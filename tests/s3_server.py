"""A local S3 for tests: moto's standalone server, and a fault-injecting HTTP proxy in front of it.

`ThreadedMotoServer` is a real HTTP server speaking the S3 REST API (what s3fs's own tests use);
clients reach it through `AWS_ENDPOINT_URL`, exactly as they would reach MinIO or Ceph.

`FaultProxy` forwards every request to the server and counts them. `inject(faults)` makes it
fail `faults` of the following requests — every `every`-th one — cycling through an HTTP 503
(SlowDown), an HTTP 500 (InternalError) and a connection dropped without any response; then it
goes back to plain forwarding. Faults are counted per kind so a test can check they happened.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import logging
import socket
import threading
from urllib.parse import urlsplit

from moto.server import ThreadedMotoServer

FAULT_KINDS = ("503", "500", "drop")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_ERROR_BODY = ("<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
               "<Message>injected by the test proxy</Message></Error>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """moto's S3 server on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


class FaultProxy:
    """HTTP proxy to `upstream` that fails some requests on demand (see the module docstring)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()   # "GET", "PUT", ...
        self.paths: collections.Counter[tuple[str, str]] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self._to_inject = 0
        self._every = 1
        self._seen = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the test output stays readable
                pass

            def _handle(self) -> None:
                body = self._read_body()
                fault = proxy._next_fault(self.command, self.path)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault:
                    payload = _ERROR_BODY.format(code="SlowDown" if fault == "503" else "InternalError").encode()
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":  # a body after a HEAD response would corrupt the connection
                        self.wfile.write(payload)
                    return
                self._forward(body)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                # A HEAD response has no body but announces the object's length: pass that one through.
                length = response.getheader("Content-Length", "0") if self.command == "HEAD" else len(payload)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def inject(self, faults: int, every: int = 3) -> None:
        with self.lock:
            self._to_inject, self._every, self._seen = faults, every, 0

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.paths.clear()
            self.faults.clear()

    def _next_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            self.requests[method] += 1
            self.paths[(method, path.split("?", 1)[0])] += 1
            if self._to_inject <= 0:
                return None
            self._seen += 1
            if self._seen % self._every:
                return None
            kind = FAULT_KINDS[sum(self.faults.values()) % len(FAULT_KINDS)]
            self.faults[kind] += 1
            self._to_inject -= 1
            return kind

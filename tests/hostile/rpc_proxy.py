"""A JSON-RPC proxy on 127.0.0.1 that rewrites the batch responses of a real node."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Batch rewrite: it takes the request list and the node's response list and
#: returns the body to send, as a JSON value or as raw bytes.
Rewrite = Callable[[list[Any], list[Any]], Any]


class RpcProxy:
    """Forward every request to ``upstream`` and apply ``rewrite`` to batch responses."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rewrite: Rewrite | None = None
        #: Seconds between bytes of a batch response, or 0 to send it at once.
        self.trickle = 0.0
        self.batches = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def forward(self, body: bytes) -> bytes:
        request = urllib.request.Request(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = proxy.forward(body)
                requests = json.loads(body)
                is_batch = isinstance(requests, list)
                if is_batch:
                    proxy.batches += 1
                if is_batch and proxy.rewrite is not None:
                    rewritten = proxy.rewrite(requests, json.loads(answer))
                    if not isinstance(rewritten, bytes):
                        rewritten = json.dumps(rewritten).encode()
                    answer = rewritten
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if is_batch and proxy.trickle:
                    for index in range(len(answer)):
                        self.wfile.write(answer[index : index + 1])
                        self.wfile.flush()
                        time.sleep(proxy.trickle)
                else:
                    self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextmanager
def rpc_proxy(upstream: str) -> Iterator[RpcProxy]:
    proxy = RpcProxy(upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()

"""Fixtures for the storage tests: one js-ipfs daemon per session, a lying node."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ztfm_chain.exceptions import ConfigError
from ztfm_chain.storage.jsipfs import find_node_modules, run_ipfs_daemon

from .helpers import api_version


@dataclass(frozen=True)
class IpfsDaemon:
    """A running js-ipfs daemon: its API multiaddr and repository directory."""

    api: str
    repo_dir: Path


@pytest.fixture(scope="session")
def ipfs_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpfsDaemon]:
    """A js-ipfs daemon on 127.0.0.1, started once per session.

    Skips the test if js-ipfs is not installed. After the session, fails if the
    daemon still responds, because run_ipfs_daemon must stop it.
    """
    try:
        node_modules = find_node_modules()
    except ConfigError as err:
        pytest.skip(f"js-ipfs daemon unavailable: {err}")
    repo_dir = tmp_path_factory.mktemp("jsipfs") / "repo"
    with run_ipfs_daemon(repo_dir, node_modules=node_modules) as api:
        yield IpfsDaemon(api, repo_dir)
    try:
        api_version(api)
    except OSError:
        return
    pytest.fail(f"js-ipfs daemon at {api} still responds after run_ipfs_daemon exited")


@pytest.fixture
def ipfs_api(ipfs_daemon: IpfsDaemon) -> str:
    """API multiaddr of the session's js-ipfs daemon."""
    return ipfs_daemon.api


@dataclass
class FakeNode:
    """A Kubo RPC API on 127.0.0.1 that serves whatever the test sets.

    ``cat_body`` is sent for every ``/api/v0/cat``, ``add_hash`` is returned as
    the CID of every ``/api/v0/add``, and each request waits ``delay`` seconds
    before it responds. With ``trickle`` set, ``cat_body`` is sent one byte per
    ``trickle`` seconds, as one HTTP chunk when ``chunked`` is set. ``cat_headers``
    are added to every cat response. ``requests`` records each path with its query.
    """

    api: str = ""
    cat_body: bytes = b""
    add_hash: str = ""
    delay: float = 0.0
    trickle: float = 0.0
    chunked: bool = False
    cat_headers: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)


class _FakeNodeHandler(BaseHTTPRequestHandler):
    server: _FakeNodeServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                self.rfile.read(size + 2)
                if size == 0:
                    return
        self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _answer(
        self,
        status: int,
        content_type: str,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # A client that stops reading early, as KuboStore does past its size
        # limit, closes the connection before the body is sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def _trickle(self, body: bytes, interval: float, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if chunked:
                self.wfile.write(b"%x\r\n" % len(body))
            for index in range(len(body)):
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
                time.sleep(interval)
            if chunked:
                self.wfile.write(b"\r\n0\r\n\r\n")

    def do_POST(self) -> None:
        node = self.server.node
        url = urllib.parse.urlsplit(self.path)
        node.requests.append((url.path, urllib.parse.parse_qs(url.query)))
        self._read_body()
        time.sleep(node.delay)
        if url.path == "/api/v0/cat" and node.trickle:
            self._trickle(node.cat_body, node.trickle, node.chunked)
        elif url.path == "/api/v0/cat":
            self._answer(
                200, "application/octet-stream", node.cat_body, node.cat_headers
            )
        elif url.path == "/api/v0/add":
            answer = {"Name": "bytes", "Hash": node.add_hash, "Size": "1"}
            self._answer(200, "application/json", json.dumps(answer).encode())
        else:
            error = {"Message": f"unknown command {url.path}", "Code": 0}
            self._answer(500, "application/json", json.dumps(error).encode())


class _FakeNodeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, node: FakeNode) -> None:
        super().__init__(("127.0.0.1", 0), _FakeNodeHandler)
        self.node = node


@pytest.fixture
def fake_node() -> Iterator[FakeNode]:
    """A lying Kubo RPC API on a free port of 127.0.0.1."""
    node = FakeNode()
    server = _FakeNodeServer(node)
    node.api = f"/ip4/127.0.0.1/tcp/{server.server_address[1]}/http"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield node
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_api() -> str:
    """API multiaddr of a port on 127.0.0.1 where nothing listens."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return f"/ip4/127.0.0.1/tcp/{port}/http"

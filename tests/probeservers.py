"""Real servers for the probe's tests, all on 127.0.0.1: an etcd of the test's own, and a TCP
relay that keeps every byte it passes (to see what the probe really sent, and what came back).

Only processes started here are ever signalled, by their pid.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

ETCD = "/usr/bin/etcd"


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now, chosen by the kernel (bound together)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Etcd:
    """One etcd member on 127.0.0.1 (free ports, data in ``directory``), started and stopped
    by the test. ``setpriv --pdeathsig KILL`` makes it die with the test process, however
    that ends."""

    def __init__(self, directory: Path, binary: str = ETCD) -> None:
        self.directory = directory
        self.binary = binary
        self.client_port, self.peer_port = free_ports(2)
        self.log_path = directory / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL (the JSON gateway and /health)."""
        return f"http://127.0.0.1:{self.client_port}"

    def argv(self) -> list[str]:
        """A single-member cluster, everything on 127.0.0.1."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            self.binary,
            "--name=probe-test",
            f"--data-dir={self.directory / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=probe-test={peer}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv

    def start(self, timeout: float = 60.0) -> None:
        """Start etcd and wait (bounded) until /health says true; stop it if it does not."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            # A refused connection (not listening yet) is suppressed with the rest.
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(self.url + "/health", timeout=2) as r,
            ):
                if b'"true"' in r.read():
                    return
            time.sleep(0.1)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"etcd did not become healthy within {timeout:g} s: {tail}")

    def stop(self) -> None:
        """SIGTERM to the etcd started here (SIGKILL if it lingers); nothing if none runs."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the JSON gateway; the answer's JSON."""
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer

    def put(self, key: bytes, value: bytes) -> None:
        """Write one key through the JSON gateway."""
        b64 = base64.b64encode
        self.call("/v3/kv/put", {"key": b64(key).decode(), "value": b64(value).decode()})


class Relay:
    """A TCP relay on 127.0.0.1 to ``upstream`` that keeps every byte, each way."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sent = bytearray()  # client -> upstream
        self.received = bytearray()  # upstream -> client
        self.port = 0
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Listen and relay on threads until :meth:`close`."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._relay, client)

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream, timeout=10) as upstream:
            client.settimeout(10)
            pumps = [
                threading.Thread(target=self._pump, args=(client, upstream, self.sent)),
                threading.Thread(target=self._pump, args=(upstream, client, self.received)),
            ]
            for p in pumps:
                p.start()
            for p in pumps:
                p.join(20)

    def _pump(self, src: socket.socket, dst: socket.socket, into: bytearray) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                with self._lock:
                    into.extend(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop accepting, and wait (bounded) for the relays."""
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        for thread in self._threads:
            thread.join(20)


class _Bytes:
    """A socket stand-in that http.client reads a recorded answer from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))


def split_request(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """The request line, headers (lower-case names) and body of one recorded request."""
    head, _, body = data.partition(b"\r\n\r\n")
    line, *rest = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
    return line, headers, body[: int(headers.get("content-length", len(body)))]


def parse_response(data: bytes) -> tuple[int, bytes]:
    """The status and body of one recorded answer (chunked or not), as http.client reads it."""
    resp = HTTPResponse(_Bytes(data))  # type: ignore[arg-type]
    resp.begin()
    try:
        return resp.status, resp.read()
    finally:
        resp.close()


class Talker:
    """A TCP server on 127.0.0.1 that answers every connection with fixed bytes, whatever was
    asked: a plain-HTTP server's 400 to a TLS hello, or a service that does not speak HTTP."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(65536)  # what was asked: read first, so closing sends no RST
                conn.sendall(self.answer)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass

    def close(self) -> None:
        """Stop accepting and wait (bounded) for the server thread."""
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

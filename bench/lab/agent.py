"""The lab's stand-in agent: a full resync from etcd, then a watch; exit 1 when etcd is lost.

What a cilium-agent in kvstore mode does against etcd, reduced to the load it makes: at start
it lists the whole prefix (one Range of tens of thousands of keys, megabytes of JSON) with a
client timeout, then watches the prefix and idles. When etcd stays unreachable for
``--unreachable`` seconds, or the resync times out or fails, it exits 1, and its supervisor
decides when it runs again (the lab, ``bench/lab/``, supervises it four ways).

Why this shape: 200 of these share two cores with etcd, so an idle agent must cost nothing
(it blocks in ``recv`` on its watch) and a start must cost little (no third-party import, no
HTTP library: ``python -I -S`` starts in about 30 ms, and the resync is one request over a raw
socket to etcd's v3 JSON gateway, read to EOF without parsing the 30 MB body). HTTP/1.0 keeps
the reading trivial: no chunking, the server closes the connection after the body.

With ``--nice N`` it lowers its niceness to N before anything else (:func:`renice`).

It reports on stdout, one line per event, flushed: ``start``; ``request`` (the resync was sent);
``synced KEYS BYTES SECONDS``; ``failed REASON SECONDS``; ``lost`` (the watch broke) and
``watching`` (it is established). The lab reads these lines; nothing else is printed.

    python -I -S bench/lab/agent.py --port 2379 --prefix cilium/state/ --timeout 5
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

#: How long to wait between two attempts to reach an etcd that refuses connections.
RETRY_SECONDS = 0.5
#: The revision in the response's header (the first few hundred bytes).
_REVISION = re.compile(rb'"revision":"?(\d+)')


class Failed(Exception):
    """The agent cannot go on: etcd is unreachable, too slow or answered an error."""


def say(*words: object) -> None:
    """One event line on stdout, flushed at once (the lab timestamps it on arrival)."""
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def range_end(prefix: bytes) -> bytes:
    """The end of etcd's range for every key under ``prefix``: the prefix with its last byte
    incremented (etcd's ``WithPrefix``)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def request(path: str, body: Mapping[str, object]) -> bytes:
    """An HTTP/1.0 POST of ``body`` as JSON to etcd's gateway."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.0\r\nHost: etcd\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def connect(host: str, port: int, unreachable: float) -> socket.socket:
    """A connection to etcd, retried while it refuses for up to ``unreachable`` seconds."""
    deadline = time.monotonic() + unreachable
    while True:
        left = deadline - time.monotonic()
        try:
            return socket.create_connection((host, port), timeout=max(left, 0.1))
        except OSError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"unreachable:{type(exc).__name__}") from None
            time.sleep(min(RETRY_SECONDS, left))


class Synced(NamedTuple):
    """What one full resync read: keys, bytes (headers included) and etcd's revision."""

    keys: int
    size: int
    revision: int


#: What starts every key in etcd's JSON answer.
_KEY: Final = b'"key":'


def resync(
    host: str,
    port: int,
    prefix: bytes,
    timeout: float,
    unreachable: float,
    sent: Callable[[], None] | None = None,
) -> Synced:
    """The full resync: one Range over ``prefix``, read to the end within ``timeout`` seconds
    from sending it (``sent`` is called then).

    The answer (30 MB of JSON for 20,000 keys of 1 KiB) is counted as it streams in, never
    kept: 200 agents buffering it would take 12 GB on a machine shared with etcd.
    """
    body = {
        "key": base64.b64encode(prefix).decode(),
        "range_end": base64.b64encode(range_end(prefix)).decode(),
    }
    sock = connect(host, port, unreachable)
    head = b""
    keys = size = 0
    tail = b""
    with sock:
        deadline = time.monotonic() + timeout
        sock.settimeout(timeout)
        try:
            sock.sendall(request("/v3/kv/range", body))
            if sent is not None:
                sent()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failed("timeout")
                sock.settimeout(left)
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                if len(head) < 4096:
                    head += chunk[: 4096 - len(head)]
                size += len(chunk)
                # A key marker may straddle two chunks: count over the previous one's tail.
                keys += (tail + chunk).count(_KEY)
                tail = chunk[-(len(_KEY) - 1) :]
        except TimeoutError:
            raise Failed("timeout") from None
        except OSError as exc:
            raise Failed(f"error:{type(exc).__name__}") from None
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        raise Failed("status:" + head[:12].decode("latin-1").replace(" ", "_"))
    found = _REVISION.search(head)
    return Synced(keys, size, int(found.group(1)) if found else 0)


def watch(host: str, port: int, prefix: bytes, revision: int, unreachable: float) -> None:
    """Watch ``prefix`` from ``revision`` until etcd stays unreachable (raises Failed)."""
    create = {
        "key": base64.b64encode(prefix).decode(),
        "range_end": base64.b64encode(range_end(prefix)).decode(),
        "start_revision": revision,
    }
    lost_at = time.monotonic()
    while True:
        sock = connect(host, port, max(unreachable - (time.monotonic() - lost_at), 0.1))
        with sock:
            # No timeout while watching: an idle agent blocks in recv and costs nothing.
            sock.settimeout(None)
            try:
                sock.sendall(request("/v3/watch", {"create_request": create}))
                first = sock.recv(65536)
                if first.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                    say("watching")
                    while sock.recv(65536):
                        pass  # events: the keyspace does not change in the lab
                    lost_at = time.monotonic()
            except OSError:
                pass
        say("lost")
        if time.monotonic() - lost_at >= unreachable:
            raise Failed("watch")
        time.sleep(RETRY_SECONDS)


def renice(level: int) -> None:
    """Run the resync at niceness ``level`` once started (lowering it needs root; without, the
    agent stays where it was started and says ``nice-denied``).

    On a node the agent has a core of its own. Here it starts at the nodes' niceness (its
    start-up yields to etcd), then reads its resync at ``level``: at nice 10 the box's other
    load (other people's processes, at nice 0) would starve the reading into timeouts that
    etcd did not cause.
    """
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > level:
            os.setpriority(os.PRIO_PROCESS, 0, level)
    except OSError:
        say("nice-denied")


def main(argv: list[str]) -> int:
    """Resync, then watch; 1 on any failure (the supervisor decides what comes next)."""
    args = dict(zip(argv[0::2], argv[1::2], strict=False))
    host = args.get("--host", "127.0.0.1")
    port = int(args["--port"])
    prefix = args.get("--prefix", "cilium/state/").encode()
    timeout = float(args.get("--timeout", "5"))
    unreachable = float(args.get("--unreachable", "5"))
    if "--nice" in args:
        renice(int(args["--nice"]))
    say("start")
    began = time.monotonic()
    try:
        got = resync(host, port, prefix, timeout, unreachable, lambda: say("request"))
        say("synced", got.keys, got.size, f"{time.monotonic() - began:.3f}")
        watch(host, port, prefix, got.revision + 1 if got.revision else 0, unreachable)
    except Failed as exc:
        say("failed", exc, f"{time.monotonic() - began:.3f}")
        return 1
    return 1  # unreachable: watch only returns by raising


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)

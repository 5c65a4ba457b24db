"""A warm interpreter that forks the lab's ``agent-supervisor`` calls (see :mod:`supervisors`).

It imports the CLI once, then for each request (argv, and the child's stdin, stdout and stderr
as file descriptors over a Unix socket) forks a child that runs the console script's own
``main(argv)``: a process of its own with its own pid, state file, lock, probe and exec of the
agent, only without the 150 ms of imports that a node pays on its own core and that 2 shared
cores would pay in series for 200 nodes.

Protocol (one JSON message per SOCK_SEQPACKET packet):

- ``{"id": N, "argv": [...]}`` with 3 descriptors: fork; answer ``{"id": N, "pid": P}``; when
  the child ends, ``{"id": N, "exit": CODE}`` (negative: the signal that ended it);
- ``{"signal": S, "ids": [N, ...]}``: send S to those children that have not been reaped
  (a pid not reaped is still ours, so no other process can be hit);
- end of file: TERM to every child, then KILL, then exit.

Every child dies with this process (``PR_SET_PDEATHSIG``, kept across the gate's exec of the
agent), and this process dies with the lab (``setpriv --pdeathsig``).

    python -P bench/lab/forkserver.py FD
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from supervisor.cli.app import main as cli_main

PR_SET_PDEATHSIG = 1


def _child(argv: list[str], fds: list[int], parent: int) -> None:
    """In the forked child: the given stdio, death with the server, the CLI; never returns."""
    code = 70
    try:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the server died between fork and prctl
            os._exit(1)
        try:
            cli_main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _send(sock: socket.socket, doc: dict[str, Any]) -> None:
    # The lab may be gone: the loop ends at the next read.
    with contextlib.suppress(OSError):
        sock.send(json.dumps(doc).encode())


def serve(fd: int) -> int:
    """Fork a child per request until the lab closes the socket."""
    sock = socket.socket(fileno=fd)
    me = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, int] = {}  # pid -> request id
    by_id: dict[int, int] = {}  # request id -> pid
    _send(sock, {"ready": True})
    while True:
        try:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [], 1.0)
        except InterruptedError:
            continue
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 4096):
                        break
                except BlockingIOError:
                    break
        while True:  # reap every child that ended, and say so
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            rid = children.pop(pid, None)
            if rid is not None:
                by_id.pop(rid, None)
                _send(sock, {"id": rid, "exit": os.waitstatus_to_exitcode(status)})
        if sock.fileno() not in ready:
            continue
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 3)
        except OSError:
            msg, fds = b"", []
        if not msg:
            break
        req = json.loads(msg)
        if "signal" in req:
            for rid in req["ids"]:
                target = by_id.get(rid)
                if target is not None:  # not reaped: still ours
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(target, int(req["signal"]))
            continue
        pid = os.fork()
        if pid == 0:
            _child([str(a) for a in req["argv"]], fds, me)
        for f in fds:
            os.close(f)
        children[pid] = req["id"]
        by_id[req["id"]] = pid
        _send(sock, {"id": req["id"], "pid": pid})
    # The lab is gone or done: every child stopped (ours, not reaped yet, by pid).
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid:
                children.pop(pid, None)
            else:
                time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))

"""How the lab starts a node's ``agent-supervisor`` calls (``gate --wait``, ``record-exit``).

- ``cold``: a process per call, ``agent-supervisor ...`` as systemd runs it: the interpreter and
  the CLI's imports every time, about 250 ms of CPU per call;
- ``warm`` (the default): a fork of an interpreter that has imported the CLI already
  (:mod:`forkserver`), running the console script's ``main(argv)``: the same code, its own
  process, pid, state, lock, probe and exec of the agent; about 30 ms of CPU per call.

Why warm: after a crash every node runs ``record-exit`` and then ``gate --wait``. On a fleet
each node pays their start-up on its own core, in parallel, in half a second. Here 200 nodes
share 2 cores with etcd: cold, their imports alone take 100 CPU seconds, 50 s of the whole box,
which no real fleet pays and which would be counted against the gate's recovery (measured:
nothing started before 60 s after the crash of 200, with N/C = 48 s). Warm, the lab pays what a
node pays beyond its start-up.

Both give the lab objects with the same surface as :class:`asyncio.subprocess.Process`
(``pid``, ``stdout``, ``stderr``, ``returncode``, ``wait()``, ``send_signal()``, ``kill()``),
and every process dies with the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Any, Final, Protocol

from .base import FORKSERVER, LabError, child_env, log, on_a_node

MODES: Final = ("warm", "cold")


class Proc(Protocol):
    """What the lab needs of a process it started."""

    pid: int
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class Spawner(Protocol):
    """Starts ``agent-supervisor ARGS`` as a node's process."""

    mode: str

    async def spawn(
        self, args: Sequence[str], *, pipes: bool, stderr: IO[bytes] | None = None
    ) -> Proc:
        """``args`` after the program name; ``pipes``: stdout and stderr as readers, else
        stdout to /dev/null and stderr to ``stderr``."""
        ...

    async def close(self) -> None:
        """Stop whatever the spawner runs (its children are stopped by their owners)."""
        ...


class Cold:
    """A process per call (the installed console script), at the nodes' niceness."""

    mode = "cold"

    def __init__(self, cli: Sequence[str]) -> None:
        self.cli = tuple(cli)

    async def spawn(
        self, args: Sequence[str], *, pipes: bool, stderr: IO[bytes] | None = None
    ) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            *on_a_node([*self.cli, *args]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stderr=subprocess.PIPE if pipes else stderr,
            env=child_env(),
        )
        return proc

    async def close(self) -> None:
        return None


class WarmProcess:
    """A child of the fork server: signals go through the server, which knows whether the
    pid is still its child (not reaped), so no other process can be hit."""

    def __init__(self, server: Warm, rid: int) -> None:
        self.server = server
        self.rid = rid
        self.pid = 0
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[int] = loop.create_future()
        self.ended: asyncio.Future[int] = loop.create_future()

    @property
    def returncode(self) -> int | None:
        return self.ended.result() if self.ended.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self.ended)

    def send_signal(self, sig: int) -> None:
        if not self.ended.done():
            self.server.signal(sig, [self.rid])

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Warm:
    """The fork server (:mod:`forkserver`), started at the nodes' niceness."""

    mode = "warm"

    def __init__(self, errlog: IO[bytes]) -> None:
        self.errlog = errlog
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self.ids = itertools.count(1)
        self.children: dict[int, WarmProcess] = {}
        self.ready: asyncio.Future[None] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it has imported the CLI."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *on_a_node([sys.executable, "-P", str(FORKSERVER), str(theirs.fileno())]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.errlog,
                env=child_env(),
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.sock = ours
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._readable)
        try:
            await asyncio.wait_for(asyncio.shield(self.ready), timeout)
        except TimeoutError:
            raise LabError(f"the fork server did not start within {timeout:g} s") from None

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            msg = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg = b""
        if not msg:
            self._lost()
            return
        doc: dict[str, Any] = json.loads(msg)
        if doc.get("ready") and self.ready is not None and not self.ready.done():
            self.ready.set_result(None)
            return
        child = self.children.get(int(doc.get("id", -1)))
        if child is None:
            return
        if "pid" in doc and not child.started.done():
            child.pid = int(doc["pid"])
            child.started.set_result(child.pid)
        if "exit" in doc and not child.ended.done():
            child.ended.set_result(int(doc["exit"]))
            self.children.pop(child.rid, None)

    def _lost(self) -> None:
        """The server is gone: every child of it is gone too (they die with it)."""
        if self.sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for child in list(self.children.values()):
            if not child.started.done():
                child.started.set_exception(LabError("the fork server is gone"))
            if not child.ended.done():
                child.ended.set_result(-signal.SIGTERM)
        self.children.clear()
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(LabError("the fork server did not start"))

    def signal(self, sig: int, rids: Sequence[int]) -> None:
        """Send ``sig`` to those children that are still the server's."""
        if self.sock is None:
            return
        with contextlib.suppress(OSError):
            self.sock.send(json.dumps({"signal": int(sig), "ids": list(rids)}).encode())

    async def spawn(
        self, args: Sequence[str], *, pipes: bool, stderr: IO[bytes] | None = None
    ) -> Proc:
        if self.sock is None:
            raise LabError("the fork server is not running")
        loop = asyncio.get_running_loop()
        child = WarmProcess(self, next(self.ids))
        given: list[int] = [os.open(os.devnull, os.O_RDONLY)]
        ours: list[int] = []
        try:
            if pipes:
                for _ in range(2):
                    r, w = os.pipe()
                    ours.append(r)
                    given.append(w)
            else:
                given.append(os.open(os.devnull, os.O_WRONLY))
                given.append(os.dup(stderr.fileno()) if stderr is not None else os.dup(given[1]))
            self.children[child.rid] = child
            msg = json.dumps({"id": child.rid, "argv": list(args)}).encode()
            socket.send_fds(self.sock, [msg], given)
        except BaseException:
            for fd in ours:
                os.close(fd)
            self.children.pop(child.rid, None)
            raise
        finally:
            for fd in given:
                os.close(fd)
        readers: list[asyncio.StreamReader] = []
        for fd in ours:
            reader = asyncio.StreamReader(limit=1 << 20)
            protocol = asyncio.StreamReaderProtocol(reader)
            await loop.connect_read_pipe(functools.partial(_same, protocol), os.fdopen(fd, "rb", 0))
            readers.append(reader)
        if readers:
            child.stdout, child.stderr = readers
        await child.started
        return child

    async def close(self) -> None:
        """Close the socket (the server stops its children, then exits); wait, then stop it."""
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(proc.wait(), 15.0)
        except TimeoutError:
            log("the fork server did not stop within 15 s: killing it")
            proc.kill()
            await proc.wait()


def _same(protocol: asyncio.StreamReaderProtocol) -> asyncio.StreamReaderProtocol:
    return protocol


async def make_spawner(mode: str, cli: Sequence[str], errlog: IO[bytes]) -> Spawner:
    """The spawner of ``--supervisors``."""
    if mode == "cold":
        return Cold(cli)
    warm = Warm(errlog)
    await warm.start()
    return warm

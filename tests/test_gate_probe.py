"""The gate with a control-plane probe: real HTTP servers on loopback, real gate processes."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, run_cli


class Health:
    """A loopback health endpoint whose status code the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        self.delay = 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                if outer.delay:
                    time.sleep(outer.delay)
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(b"ok" if outer.status == 200 else b"etcd down")

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/readyz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health() -> Iterator[Health]:
    """A running health endpoint."""
    h = Health()
    yield h
    h.close()


#: A one-node cluster with a one-second window: the window passes within a test.
SMALL = [
    "--cluster-size",
    "1",
    "--set",
    "window.base=1s",
    "--set",
    "window.per_node=0",
    "--set",
    "window.min=1s",
]


def run_gate(state_dir: Path, url: str, *extra: str, wait: bool = False) -> Result:
    """One gate process with a one-second window (J = W/12 with a probe) and the probe on
    ``url``; ``wait``: ``gate --wait``."""
    r = run_cli(
        "gate",
        *(["--wait"] if wait else []),
        "--json",
        "--state-dir",
        str(state_dir),
        *SMALL,
        "--set",
        f"probe.urls={url}",
        "--set",
        "probe.timeout=2s",
        *extra,
        timeout=120,
    )
    assert r.code in (0, 75), r.stderr
    return r


def gate(state_dir: Path, url: str, *extra: str, wait: bool = False) -> tuple[int, dict[str, Any]]:
    """One gate decision, as (exit code, decision JSON)."""
    r = run_gate(state_dir, url, *extra, wait=wait)
    return r.code, json.loads(r.stdout)


def record_exit(state_dir: Path, code: str, *extra: str) -> None:
    """The end of the run, as ExecStopPost reports it."""
    assert run_cli("record-exit", "--code", code, "--state-dir", str(state_dir), *extra).code == 0


def test_a_first_start_asks_the_probe_at_its_admission_slot(
    state_dir: Path, health: Health
) -> None:
    """Invariant 11: a first start with a probe waits for its admission slot and needs the
    probe's "ready" there: one request, then the start."""
    code, d = gate(state_dir, health.url, wait=True)
    assert code == 0 and d["allowed"] is True and d["grid"] == "admission"
    assert d["probe"] == "ready" and health.hits == 1


def test_a_crash_loop_waits_while_the_control_plane_is_down_then_starts_at_a_slot(
    state_dir: Path, health: Health
) -> None:
    """Invariant 3: after a failed run, "down" at S moves the start to the next window slot;
    a waiting gate asks once per slot and starts at the first slot where the answer is ready."""
    assert gate(state_dir, health.url, wait=True)[0] == 0
    record_exit(state_dir, "1")
    health.status = 500
    code, d = gate(state_dir, health.url, "--set", "max_multiplier=64", wait=False)
    assert code == 75 and d["grid"] == "window"
    before = health.hits
    health.status = 200
    code, d = gate(state_dir, health.url, wait=True)
    assert code == 0 and d["allowed"] is True and d["probe"] == "ready"
    assert health.hits == before + 1  # asked once, at the slot, not in a loop


def test_a_probe_that_says_down_for_ever_cannot_hold_a_start_past_its_cap(
    state_dir: Path, health: Health
) -> None:
    """Invariant 11's liveness against a real server: a probe that answers 500 at every ask
    holds the start at most W * max_multiplier (here 4 s) past its slot, then the start comes."""
    health.status = 500
    code, d = gate(state_dir, health.url, wait=True)
    assert code == 0 and d["allowed"] is True
    assert "the probe has held this start" in str(d["reason"]) and health.hits >= 2


def test_an_unknown_end_waits_too_while_the_probe_says_down(
    state_dir: Path, health: Health
) -> None:
    """A run whose end nobody reported (a power loss) is a failed run: while the probe says
    down the start is refused at its slot."""
    assert gate(state_dir, health.url, wait=True)[0] == 0
    health.status = 503
    code, d = gate(state_dir, health.url, wait=False)
    if code == 75:
        assert d["backoff_level"] == 1
    code, d = gate(state_dir, health.url, "--set", "max_multiplier=64", wait=False)
    assert code == 75


def test_an_unreachable_probe_is_down(state_dir: Path) -> None:
    """A probe URL nobody listens on answers "down", and the gate says so in its reason."""
    dead = f"http://127.0.0.1:{free_port()}/readyz"
    assert gate(state_dir, dead, "--set", "window.admission=1ms", wait=False)[0] in (0, 75)
    s = json.loads((state_dir / "cilium-agent.json").read_text())
    until = s["ask"]["until"]
    time.sleep(max(0.0, _ts(until) - time.time()))  # the slot: a wait, not a timing assertion
    code, d = gate(state_dir, dead, "--set", "window.admission=1ms", "--set", "max_multiplier=64")
    assert code == 75 and d["probe"] == "down" and "control plane is down" in str(d["reason"])


def test_a_broken_probe_is_loud_and_ignored(state_dir: Path, health: Health) -> None:
    """Invariant 11: a 403 means the probe itself cannot succeed ("broken"): an error log line
    and the start as if no probe were configured."""
    health.status = 403
    r = run_gate(state_dir, health.url, wait=True)
    d = json.loads(r.stdout)
    assert r.code == 0 and d["allowed"] is True and d["probe"] == "broken"
    assert '"event": "probe.broken"' in r.stderr and '"level": "error"' in r.stderr


def test_credentials_in_probe_urls_never_reach_the_log(state_dir: Path, health: Health) -> None:
    """A password written into a probe URL is redacted in every log line."""
    url = health.url.replace("http://", "http://probe:s3cret-pw@")
    health.status = 500
    r = run_gate(state_dir, url, "--set", "window.admission=1ms", wait=True)
    assert r.code == 0 and "probe.down" in r.stderr
    assert "s3cret-pw" not in r.stderr and "***@127.0.0.1" in r.stderr


def test_a_hanging_probe_does_not_hold_the_lock(state_dir: Path, health: Health) -> None:
    """While the gate waits on a slow probe, record-exit (ExecStopPost) and operators are not
    held up: the probe is asked outside the state's lock."""
    import subprocess
    import sys

    from conftest import clean_env

    health.status, health.delay = 500, 4.0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor",
            "gate",
            "--wait",
            "--state-dir",
            str(state_dir),
            *SMALL,
            "--set",
            f"probe.urls={health.url}",
            "--set",
            "probe.timeout=5s",
            "--set",
            "probe.max_latency=1s",
        ],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while health.hits == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.hits == 1  # the gate is now inside its probe
        r = run_cli("hold", "--reason", "during a probe", "--state-dir", str(state_dir))
        still_probing = proc.poll() is None
        assert r.code == 0 and still_probing  # the operator was not queued behind the probe
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ts(value: object) -> float:
    """An ISO 8601 time of the decision JSON as epoch seconds."""
    from datetime import datetime

    return datetime.fromisoformat(str(value)).timestamp()


def free_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

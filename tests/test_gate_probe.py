"""The gate with a control-plane probe: real HTTP servers on loopback, real gate processes."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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


def run_gate(state_dir: Path, url: str, *extra: str) -> Result:
    """One gate process with a one-second window and the probe on ``url``."""
    r = run_cli(
        "gate",
        "--json",
        "--state-dir",
        str(state_dir),
        *SMALL,
        "--set",
        f"probe.urls={url}",
        *extra,
    )
    assert r.code in (0, 75), r.stderr
    return r


def _ts(value: object) -> float:
    """An ISO 8601 time of the decision JSON as epoch seconds."""
    from datetime import datetime

    return datetime.fromisoformat(str(value)).timestamp()


def pass_the_slot() -> None:
    """Sleep past the node's slot after a failed run: S < last + 2W with a one-second W.

    A wait for the state to be where the test needs it, not a timing assertion.
    """
    time.sleep(2.1)


def gate(state_dir: Path, url: str) -> tuple[int, dict[str, object]]:
    """One gate decision, as (exit code, decision JSON)."""
    r = run_gate(state_dir, url, "--set", "probe.timeout=2s")
    return r.code, json.loads(r.stdout)


def test_failed_run_waits_while_the_control_plane_is_down(state_dir: Path, health: Health) -> None:
    """After a failed run, an unhealthy probe refuses past the window; a healthy one allows."""
    assert gate(state_dir, health.url)[0] == 0
    assert health.hits == 0  # a first start never probes
    assert run_cli("record-exit", "--code", "1", "--state-dir", str(state_dir)).code == 0
    pass_the_slot()
    health.status = 500
    code, d = gate(state_dir, health.url)
    assert code == 75 and "control plane unhealthy" in str(d["reason"])
    assert health.hits == 1  # one request per decision
    health.status = 200
    # The deferral is a fact of the state: before the slot a fresh gate waits for the same
    # slot, unprobed; from the slot on it asks again and starts (W = 1 s: either may happen).
    code, again = gate(state_dir, health.url)
    if _ts(again["decided_at"]) < _ts(d["next_allowed_at"]):
        assert code == 75 and again["next_allowed_at"] == d["next_allowed_at"]
        assert "deferred" in str(again["reason"]) and health.hits == 1
        time.sleep(1.1)  # past the deferred slot (W = 1 s): a wait, not a timing assertion
        code, again = gate(state_dir, health.url)
    assert code == 0 and again["allowed"] is True and health.hits == 2


def test_unknown_end_counts_as_failed_for_the_probe(state_dir: Path, health: Health) -> None:
    """A run whose end nobody reported (a power loss) waits too while the probe says down."""
    assert gate(state_dir, health.url)[0] == 0
    pass_the_slot()
    health.status = 503
    code, _ = gate(state_dir, health.url)
    assert code == 75


def test_clean_exit_after_a_stable_run_does_not_probe(state_dir: Path, health: Health) -> None:
    """A clean exit after a stable run restarts at once without asking the control plane."""
    assert gate(state_dir, health.url)[0] == 0
    time.sleep(1.1)
    assert (
        run_cli(
            "record-exit", "--code", "0", "--state-dir", str(state_dir), "--set", "stable_after=1s"
        ).code
        == 0
    )
    health.status = 500
    r = run_gate(state_dir, health.url, "--set", "stable_after=1s")
    assert r.code == 0 and health.hits == 0


def test_unreachable_probe_counts_as_unhealthy(state_dir: Path) -> None:
    """A probe URL nobody listens on is unhealthy, and the gate says so in one decision."""
    dead = "http://127.0.0.1:9/readyz"
    assert gate(state_dir, dead)[0] == 0
    assert run_cli("record-exit", "--code", "137", "--state-dir", str(state_dir)).code == 0
    pass_the_slot()
    code, d = gate(state_dir, dead)
    assert code == 75 and "control plane unhealthy" in str(d["reason"])


def test_credentials_in_probe_urls_never_reach_the_log(state_dir: Path, health: Health) -> None:
    """A password written into a probe URL is redacted in every log line."""
    url = health.url.replace("http://", "http://probe:s3cret-pw@")
    assert gate(state_dir, url)[0] == 0
    assert run_cli("record-exit", "--code", "1", "--state-dir", str(state_dir)).code == 0
    pass_the_slot()
    health.status = 500
    r = run_gate(state_dir, url)
    assert r.code == 75 and "probe.unhealthy" in r.stderr
    assert "s3cret-pw" not in r.stderr and "***@127.0.0.1" in r.stderr


def test_a_hanging_probe_does_not_hold_the_lock(state_dir: Path, health: Health) -> None:
    """While the gate waits on a slow probe, record-exit (ExecStopPost) is not held up."""
    import subprocess
    import sys

    from conftest import clean_env

    assert gate(state_dir, health.url)[0] == 0
    assert run_cli("record-exit", "--code", "1", "--state-dir", str(state_dir)).code == 0
    pass_the_slot()
    health.status, health.delay = 500, 4.0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor",
            "gate",
            "--state-dir",
            str(state_dir),
            "--cluster-size",
            "1",
            "--set",
            "window.base=1s",
            "--set",
            "window.per_node=0",
            "--set",
            "window.min=1s",
            "--set",
            f"probe.urls={health.url}",
            "--set",
            "probe.timeout=4s",
        ],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while health.hits == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health.hits == 1  # the gate is now inside its probe
    r = run_cli("hold", "--reason", "during a probe", "--state-dir", str(state_dir))
    still_probing = proc.poll() is None
    assert r.code == 0 and still_probing  # the operator was not queued behind the probe
    assert proc.wait(timeout=30) == 75

"""Prometheus textfile metrics: written after every decision, parsed by prometheus_client."""

from __future__ import annotations

from pathlib import Path

from conftest import QUICK_ADMISSION, run_cli
from prometheus_client.parser import text_string_to_metric_families


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples of the textfile, keyed by (name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_gate_decisions_are_counted_and_gauged(tmp_path: Path) -> None:
    """Each gate decision increments its outcome counter (a wait counts its refusal once) and
    sets the agent's gauges."""
    sd, prom = tmp_path / "state", tmp_path / "agent.prom"
    args = ("gate", "--state-dir", str(sd), "--cluster-size", "5000", "--metrics-file", str(prom))
    assert run_cli(*args[:1], "--wait", *args[1:], *QUICK_ADMISSION).code == 0
    assert run_cli(*args).code == 75
    assert run_cli(*args).code == 75
    m = samples(prom)
    a = ("agent", "cilium-agent")
    assert m[("agent_supervisor_starts_total", (a, ("decision", "allowed")))] == 1
    assert m[("agent_supervisor_starts_total", (a, ("decision", "refused")))] == 3
    assert m[("agent_supervisor_window_seconds", (a,))] == 3600
    assert m[("agent_supervisor_backoff_level", (a,))] == 1
    assert m[("agent_supervisor_next_allowed_timestamp_seconds", (a,))] > 1.7e9
    assert m[("agent_supervisor_hold_active", (a,))] == 0


def test_operator_actions_update_gauges_and_agents_share_a_file(tmp_path: Path) -> None:
    """A hold sets hold_active without counting a decision; another agent's series survive."""
    sd, prom = tmp_path / "state", tmp_path / "node.prom"
    common = ("--state-dir", str(sd), "--cluster-size", "100", "--set", f"metrics_file={prom}")
    assert run_cli("gate", "--wait", "--agent", "kube-proxy", *common, *QUICK_ADMISSION).code == 0
    assert run_cli("hold", "--reason", "maintenance", *common).code == 0
    m = samples(prom)
    assert m[("agent_supervisor_hold_active", (("agent", "cilium-agent"),))] == 1
    kube_proxy = ("agent", "kube-proxy")
    assert m[("agent_supervisor_starts_total", (kube_proxy, ("decision", "allowed")))] == 1
    assert not any(
        k[0] == "agent_supervisor_starts_total" and ("agent", "cilium-agent") in k[1] for k in m
    )


def test_forced_and_exit_code_are_reported(tmp_path: Path) -> None:
    """A forced start counts as forced and the last exit code is exported."""
    sd, prom = tmp_path / "state", tmp_path / "a.prom"
    common = ("--state-dir", str(sd), "--cluster-size", "100", "--metrics-file", str(prom))
    assert run_cli("gate", "--wait", *common, *QUICK_ADMISSION).code == 0
    assert run_cli("record-exit", "--code", "137", "--state-dir", str(sd)).code == 0
    assert run_cli("gate", "--force", "--reason", "test", *common).code == 0
    m = samples(prom)
    a = ("agent", "cilium-agent")
    assert m[("agent_supervisor_starts_total", (a, ("decision", "forced")))] == 1
    assert m[("agent_supervisor_last_exit_code", (a,))] == 137


def test_unwritable_metrics_never_change_the_decision(tmp_path: Path) -> None:
    """If the metrics file cannot be written the gate still decides and logs why."""
    sd = tmp_path / "state"
    r = run_cli(
        "gate",
        "--wait",
        "--state-dir",
        str(sd),
        "--cluster-size",
        "100",
        "--metrics-file",
        str(tmp_path / "no" / "such" / "dir" / "a.prom"),
        *QUICK_ADMISSION,
    )
    assert r.code == 0 and "metrics.write_failed" in r.stderr and r.stderr_lines == []


def test_garbage_metrics_file_is_replaced(tmp_path: Path) -> None:
    """A metrics file that does not parse is rewritten from scratch, not a crash."""
    sd, prom = tmp_path / "state", tmp_path / "a.prom"
    prom.write_text("this is {not prometheus\n")
    r = run_cli(
        "gate", "--state-dir", str(sd), "--cluster-size", "100", "--metrics-file", str(prom)
    )
    assert r.code == 75
    assert (
        samples(prom)[
            ("agent_supervisor_starts_total", (("agent", "cilium-agent"), ("decision", "refused")))
        ]
        == 1
    )


def test_probe_answers_are_counted_and_a_broken_probe_is_a_gauge(tmp_path: Path) -> None:
    """Invariant 11: each probe answer is counted by answer; a broken probe (403) sets
    probe_broken to 1 (loud), and the start goes ahead as if no probe were configured."""
    import http.server
    import threading

    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(403)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sd, prom = tmp_path / "state", tmp_path / "a.prom"
        url = f"http://127.0.0.1:{server.server_address[1]}/api/v1/pods?limit=1"
        r = run_cli(
            "gate",
            "--wait",
            "--state-dir",
            str(sd),
            "--cluster-size",
            "100",
            "--metrics-file",
            str(prom),
            "--set",
            f"probe.urls={url}",
            *QUICK_ADMISSION,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert r.code == 0, r.stderr
    m = samples(prom)
    a = ("agent", "cilium-agent")
    assert m[("agent_supervisor_probe_answers_total", (a, ("answer", "broken")))] >= 1
    assert m[("agent_supervisor_probe_broken", (a,))] == 1
    assert m[("agent_supervisor_probe_healthy", (a,))] == 0

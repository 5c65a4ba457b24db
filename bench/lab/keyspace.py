"""cilium's kvstore keyspace, written into the lab's etcd before anything else."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from .base import PREFIX, LabError, now

#: etcd's default ``--max-txn-ops``: puts per transaction while filling.
TXN_OPS: Final = 128


@dataclass(frozen=True)
class Fill:
    """What was written into etcd before the lab, and how long it took."""

    keys: int
    bytes: int
    seconds: float


def keyspace(total: int, value_size: int) -> Iterator[tuple[bytes, bytes]]:
    """cilium's kvstore layout, ``total`` keys with values of about ``value_size`` bytes.

    Identities by id and by labels (30 % and 20 %), endpoint IPs (45 %) and nodes (5 %) under
    ``cilium/state/``: what an agent lists when it resyncs. The padding makes every value
    about the same size, so the cost of a resync is set by ``total * value_size``.
    """
    n_id = max(1, total * 3 // 10)
    n_value = total * 2 // 10
    n_node = max(1, total // 20)
    n_ip = max(0, total - n_id - n_value - n_node)

    def pad(doc: dict[str, object]) -> bytes:
        raw = json.dumps(doc, separators=(",", ":"))
        doc["padding"] = "x" * max(0, value_size - len(raw) - 14)
        return json.dumps(doc, separators=(",", ":")).encode()

    def labels(i: int) -> str:
        return (
            f"k8s:app=app-{i};k8s:io.kubernetes.pod.namespace=ns-{i % 97};"
            "k8s:io.cilium.k8s.policy.cluster=default;"
        )

    def ip(i: int) -> str:
        return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"

    for i in range(n_id):
        key = f"{PREFIX}identities/v1/id/{256 + i}"
        yield key.encode(), pad({"labels": labels(i)})
    for i in range(n_value):
        key = f"{PREFIX}identities/v1/value/{labels(i % n_id)}/{ip(i % n_node)}"
        yield key.encode(), pad({"id": 256 + i % n_id})
    for i in range(n_ip):
        key = f"{PREFIX}ip/v1/default/{ip(65536 + i)}"
        doc = {
            "IP": ip(65536 + i),
            "ID": 256 + i % n_id,
            "Key": 0,
            "HostIP": f"192.168.{(i // n_node) % 256}.{i % n_node % 256}",
            "K8sNamespace": f"ns-{i % 97}",
            "K8sPodName": f"pod-{i}",
        }
        yield key.encode(), pad(doc)
    for i in range(n_node):
        key = f"{PREFIX}nodes/v1/default/node-{i:05d}"
        doc = {
            "Name": f"node-{i:05d}",
            "Cluster": "default",
            "IPAddresses": [{"Type": "InternalIP", "IP": f"192.168.{i // 256}.{i % 256}"}],
        }
        yield key.encode(), pad(doc)


def fill(url: str, total: int, value_size: int) -> Fill:
    """Write the keyspace through the JSON gateway, :data:`TXN_OPS` puts a transaction."""
    began = now()
    written = 0
    ops: list[dict[str, object]] = []

    def flush() -> None:
        body = json.dumps({"success": ops}).encode()
        req = urllib.request.Request(url + "/v3/kv/txn", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        if not answer.get("succeeded", False):
            raise LabError(f"filling etcd: a transaction failed: {str(answer)[:200]}")
        ops.clear()

    for key, value in keyspace(total, value_size):
        put = {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
        ops.append({"request_put": put})
        written += len(key) + len(value)
        if len(ops) == TXN_OPS:
            flush()
    if ops:
        flush()
    return Fill(total, written, now() - began)

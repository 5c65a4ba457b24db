"""The reference layout's option directory: ``mount/config-map/`` of ctripcloud/cilium-compose.

Its 26 files, byte for byte as that repository has them (each value with a trailing newline,
one of them empty but for it), so tests migrate the directory a real node has.
"""

from __future__ import annotations

from pathlib import Path

#: ``mount/config-map/`` of ctripcloud/cilium-compose: option -> the file's bytes.
CONFIG_MAP: dict[str, bytes] = {
    "bpf-ct-global-any-max": b"262144\n",
    "bpf-ct-global-tcp-max": b"524288\n",
    "clean-cilium-bpf-state": b"false\n",
    "clean-cilium-state": b"false\n",
    "cluster-name": b"default\n",
    "custom-cni-conf": b"false\n",
    "debug": b"false\n",
    "enable-ipv4": b"true\n",
    "enable-ipv6": b"false\n",
    "enable-legacy-services": b"false\n",
    "enable-node-port": b"false\n",
    "flannel-manage-existing-containers": b"false\n",
    "flannel-master-device": b"\n",
    "flannel-uninstall-on-exit": b"false\n",
    "identity-allocation-mode": b"kvstore\n",
    "k8s-kubeconfig-path": b"/etc/kubernetes/kubelet.kubeconfig\n",
    "kvstore": b"etcd\n",
    "kvstore-opt": b'{"etcd.config": "/var/lib/etcd-config/etcd.config"}\n',
    "masquerade": b"false\n",
    "monitor-aggregation": b"medium\n",
    "preallocate-bpf-maps": b"false\n",
    "prometheus-serve-addr": b"CHANGE_ME_NODE_IP:9090\n",
    "sidecar-istio-proxy-image": b"cilium/istio_proxy\n",
    "tofqdns-enable-poller": b"false\n",
    "tunnel": b"disabled\n",
    "wait-bpf-mount": b"false\n",
}


def config_map(root: Path) -> tuple[Path, dict[str, bytes]]:
    """``root/mount/config-map`` holding the 26 files, and what each holds.

    ``k8s-kubeconfig-path`` names a kubeconfig made under ``root`` (with the trailing newline of
    the original): a render checks that the file exists on the node, and this machine has no
    ``/etc/kubernetes/kubelet.kubeconfig``.
    """
    kubeconfig = root / "etc-kubernetes" / "kubelet.kubeconfig"
    kubeconfig.parent.mkdir(parents=True)
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    files = dict(CONFIG_MAP, **{"k8s-kubeconfig-path": f"{kubeconfig}\n".encode()})
    cm = root / "mount" / "config-map"
    cm.mkdir(parents=True)
    for name, data in files.items():
        (cm / name).write_bytes(data)
    return cm, files


def read_dir(path: Path) -> dict[str, bytes]:
    """Every entry of a directory and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}

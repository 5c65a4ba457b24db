"""A copy of a node in the reference layout (ctripcloud/cilium-compose), for tests.

The compose file is the reference's own (``version: '2'``; ``cilium-init`` with
``/init-container.sh`` and its three ``CLEAN_*``/``WAIT_*`` variables; ``cilium-install-cni``
with ``/cni-install.sh``; ``cilium-agent`` with ``restart: always``,
``entrypoint: cilium-agent --config-dir=/tmp/cilium/config-map``, host network, privileged,
``depends_on`` both, and its eleven mounts), with three changes a test needs on a shared
engine: the images are a stand-in with a dated tag (the node's own build), the container names
carry a prefix of the test's own, and host paths that would be unsafe to mount from the real
host (``/etc/kubernetes``, ``/sys/fs/bpf``, ``/lib/modules``, ...) come from a directory of the
test's, at the same targets. ``/var/run/docker.sock`` stays the real one (read-only, as in the
reference). ``mount/config-map`` holds the reference's 26 option files (byte for byte),
``mount/var/lib/etcd-config`` the ``etcd.config`` that ``kvstore-opt`` names,
``mount/var/lib/etcd-secrets`` the certificates it names.

The stand-in image is ``FROM scratch`` with Debian's static busybox, ``/init-container.sh``,
``/cni-install.sh`` and a ``cilium-agent`` that runs until TERM (tests/dockerutil.py's), and
nothing else: an entrypoint the node's image does not have (``/install-plugin.sh``) fails.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import dockerutil
from reference_config_map import CONFIG_MAP

#: The reference's 26 option files, byte for byte (tests/reference_config_map.py).
OPTIONS: Final[dict[str, bytes]] = CONFIG_MAP

ETCD_CONFIG: Final = """\
---
endpoints:
  - https://127.0.0.1:2379
ca-file: '/var/lib/etcd-secrets/etcd-client-ca.crt'
key-file: '/var/lib/etcd-secrets/etcd-client.key'
cert-file: '/var/lib/etcd-secrets/etcd-client.crt'
"""
KUBECONFIG: Final = """\
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    certificate-authority: /etc/kubernetes/pki/ca.crt
    server: https://127.0.0.1:6443
users:
- name: kubelet
  user:
    client-certificate: /etc/kubernetes/pki/kubelet-client.crt
    client-key: /etc/kubernetes/pki/kubelet-client.key
contexts:
- name: default
  context: {cluster: local, user: kubelet}
current-context: default
"""

#: ctripcloud/cilium-compose's docker-compose.yaml; {image}, {prefix} and {host} are the
#: test's (the node's image, the container names' prefix, the stand-in for the host's /).
COMPOSE: Final = """\
version: '2'
services:
  cilium-init:
    image: {image}
    container_name: {prefix}cilium-init
    network_mode: "host"
    privileged: true
    entrypoint: /init-container.sh
    environment:
      - CLEAN_CILIUM_STATE=false
      - CLEAN_CILIUM_BPF_STATE=false
      - CILIUM_WAIT_BPF_MOUNT=false
    volumes:
      - {host}/sys/fs/bpf:/sys/fs/bpf
      - {host}/var/run/cilium:/var/run/cilium
      - {host}/opt/cni/bin:/host/opt/cni/bin
      - {host}/etc/cni/net.d:/host/etc/cni/net.d
      - {host}/lib/modules:/lib/modules
      - {host}/run/xtables.lock:/run/xtables.lock
  cilium-install-cni:
    image: {image}
    container_name: {prefix}cilium-install-cni
    network_mode: "host"
    privileged: true
    entrypoint: /cni-install.sh
    volumes:
      - {host}/opt/cni/bin:/host/opt/cni/bin
      - {host}/etc/cni/net.d:/host/etc/cni/net.d
  cilium-agent:
    image: {image}
    container_name: {prefix}cilium-agent
    restart: always
    entrypoint: cilium-agent --config-dir=/tmp/cilium/config-map
    network_mode: "host"
    privileged: true
    # environment:
    #   - K8S_NODE_NAME=CHANGE_ME_K8S_NODE_NAME
    volumes:
      - {host}/etc/kubernetes:/etc/kubernetes:ro
      - ./mount/var/lib/etcd-config:/var/lib/etcd-config:ro
      - ./mount/var/lib/etcd-secrets:/var/lib/etcd-secrets:ro
      - ./mount/config-map:/tmp/cilium/config-map:ro
      - {host}/var/run/cilium:/var/run/cilium
      - {host}/sys/fs/bpf:/sys/fs/bpf
      - /var/run/docker.sock:/var/run/docker.sock:ro
      - {host}/opt/cni/bin:/host/opt/cni/bin
      - {host}/etc/cni/net.d:/host/etc/cni/net.d
      - {host}/lib/modules:/lib/modules
      - {host}/run/xtables.lock:/run/xtables.lock
    depends_on:
      - "cilium-init"
      - "cilium-install-cni"
"""
SERVICES: Final = ("cilium-init", "cilium-install-cni", "cilium-agent")
#: The reference's environment, by service.
ENVIRONMENT: Final = {
    "cilium-init": {
        "CLEAN_CILIUM_STATE": "false",
        "CLEAN_CILIUM_BPF_STATE": "false",
        "CILIUM_WAIT_BPF_MOUNT": "false",
    },
}
#: The reference's entrypoints, as Docker records them.
ENTRYPOINTS: Final = {
    "cilium-init": ["/init-container.sh"],
    "cilium-install-cni": ["/cni-install.sh"],
    "cilium-agent": ["cilium-agent", "--config-dir=/tmp/cilium/config-map"],
}
#: The host directories (and the one file) the reference mounts, below the test's stand-in /.
HOST_DIRS: Final = (
    "sys/fs/bpf",
    "var/run/cilium",
    "opt/cni/bin",
    "etc/cni/net.d",
    "lib/modules",
    "etc/kubernetes/pki",
)
DATED_TAG: Final = "20191108"

STANDIN_DOCKERFILE: Final = """FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
"""


@dataclass(frozen=True)
class Layout:
    """A node directory in the reference layout, and what it holds."""

    root: Path
    host: Path
    prefix: str
    image: str

    @property
    def compose_file(self) -> Path:
        return self.root / "docker-compose.yaml"

    @property
    def config_map(self) -> Path:
        return self.root / "mount" / "config-map"

    def container(self, service: str) -> str:
        """The container name of a reference service."""
        return f"{self.prefix}{service}"

    def mounts(self, service: str) -> set[tuple[str, str, bool]]:
        """(host source, target, read-write) of every volume of ``service`` in the file."""
        import yaml

        doc = yaml.safe_load(self.compose_file.read_text())
        out = set()
        for v in doc["services"][service].get("volumes", []):
            parts = v.split(":")
            source = parts[0]
            if source.startswith("./"):
                source = str(self.root / source[2:])
            out.add((source, parts[1], not (len(parts) > 2 and parts[2] == "ro")))
        return out


def build(root: Path, image: str, prefix: str) -> Layout:
    """Write the reference layout into ``root`` (which becomes the compose project's directory;
    its name is the project name)."""
    host = root / "host"
    root.mkdir(parents=True)
    for d in HOST_DIRS:
        (host / d).mkdir(parents=True)
    (host / "run").mkdir(parents=True)
    (host / "run" / "xtables.lock").touch()
    (host / "etc" / "kubernetes" / "kubelet.kubeconfig").write_text(KUBECONFIG)
    for name in ("ca.crt", "kubelet-client.crt", "kubelet-client.key"):
        (host / "etc" / "kubernetes" / "pki" / name).write_text(f"test {name}\n")
    config_map = root / "mount" / "config-map"
    config_map.mkdir(parents=True)
    for option, data in OPTIONS.items():
        (config_map / option).write_bytes(data)
    etcd = root / "mount" / "var" / "lib" / "etcd-config"
    etcd.mkdir(parents=True)
    (etcd / "etcd.config").write_text(ETCD_CONFIG)
    secrets = root / "mount" / "var" / "lib" / "etcd-secrets"
    secrets.mkdir(parents=True)
    for name in ("etcd-client-ca.crt", "etcd-client.crt", "etcd-client.key"):
        (secrets / name).write_text(f"test {name}\n")
    layout = Layout(root, host, prefix, image)
    layout.compose_file.write_text(COMPOSE.format(image=image, prefix=prefix, host=host))
    return layout


def standin_image(client: Any, tag: str) -> str:
    """Build the node's stand-in image as ``tag`` (the caller removes it)."""
    busybox = dockerutil.BUSYBOX.read_bytes()
    applets = subprocess.run(
        [str(dockerutil.BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dockerutil._add_file(tar, "Dockerfile", STANDIN_DOCKERFILE.encode())
        for d in ("rootfs", "rootfs/bin", "rootfs/usr", "rootfs/usr/bin", "rootfs/etc"):
            dockerutil._add_dir(tar, d)
        dockerutil._add_dir(tar, "rootfs/tmp", 0o1777)
        dockerutil._add_file(tar, "rootfs/bin/busybox", busybox, 0o755)
        for applet in applets:
            if applet != "busybox" and re.fullmatch(r"[A-Za-z0-9._\[\]-]+", applet):
                dockerutil._add_symlink(tar, f"rootfs/bin/{applet}", "busybox")
        script = dockerutil.STANDIN_SCRIPT.encode()
        dockerutil._add_file(tar, "rootfs/usr/bin/cilium-agent", script, 0o755)
        init = dockerutil.INIT_SCRIPT.encode()
        dockerutil._add_file(tar, "rootfs/init-container.sh", init, 0o755)
        dockerutil._add_file(tar, "rootfs/cni-install.sh", init, 0o755)
        dockerutil._add_file(tar, "rootfs/etc/passwd", b"root:x:0:0:root:/:/bin/sh\n")
    dockerutil._build(client, buf.getvalue(), tag, network_mode="none")
    return tag


def image_tag() -> str:
    """A dated tag of the test's own (removed at the end)."""
    digest = hashlib.sha256(dockerutil.unique("ref").encode()).hexdigest()[:8]
    return f"{dockerutil.PREFIX}-refcilium:{DATED_TAG}-{digest}"
